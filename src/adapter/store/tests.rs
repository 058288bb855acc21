use std::time::UNIX_EPOCH;

use super::*;

#[test]
fn freshness_is_judged_against_max_age() {
    let values = Metric::ALL.iter().fold(MetricValues::default(), |v, m| v.with(*m, Some(1.0)));
    let sample = Sample { values, timestamp: UNIX_EPOCH + Duration::from_secs(100), window: Duration::from_secs(1) };
    // By default: three of the sample's intervals.
    let store = MetricStore::new(None);
    assert!(store.is_fresh(&sample, UNIX_EPOCH + Duration::from_secs(103)));
    assert!(!store.is_fresh(&sample, UNIX_EPOCH + Duration::from_millis(103_001)));
    assert!(store.is_fresh(&sample, UNIX_EPOCH + Duration::from_secs(99)));
    let store = MetricStore::new(Some(Duration::from_secs(10)));
    assert!(store.is_fresh(&sample, UNIX_EPOCH + Duration::from_secs(110)));
    assert!(!store.is_fresh(&sample, UNIX_EPOCH + Duration::from_secs(111)));
}

#[test]
fn no_value_outlives_the_max_age_limit() {
    let sample = Sample {
        values: MetricValues::default().with(Metric::Utilization, Some(1.0)),
        timestamp: UNIX_EPOCH + Duration::from_secs(100),
        window: Duration::from_secs(3600),
    };
    for store in [MetricStore::new(None), MetricStore::new(Some(Duration::from_secs(86_400)))] {
        assert!(store.is_fresh(&sample, UNIX_EPOCH + Duration::from_secs(700)));
        assert!(!store.is_fresh(&sample, UNIX_EPOCH + Duration::from_secs(701)));
    }
}

#[test]
fn metric_names_round_trip_and_values_are_keyed_by_metric() {
    for m in Metric::ALL {
        assert_eq!(Metric::from_name(m.name()), Some(*m));
        let values = MetricValues::default().with(*m, Some(7.0));
        for other in Metric::ALL {
            assert_eq!(values.get(*other), (other == m).then_some(7.0));
        }
    }
    assert_eq!(Metric::from_name("cpu"), None);
}

#[test]
fn physical_ranges_refuse_what_a_quantity_cannot_carry() {
    assert!(Metric::Utilization.in_range(0.0) && Metric::Utilization.in_range(100.0));
    for v in [-0.1, 100.1, f64::NAN, f64::INFINITY] {
        assert!(!Metric::Utilization.in_range(v), "{v}");
    }
    assert!(Metric::MemoryUsed.in_range(24.0 * f64::from(1 << 30)));
    for v in [-1.0, 1e18, 1e308] {
        assert!(!Metric::MemoryUsed.in_range(v), "{v}");
    }
}
