use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn serial_of(resolver: &CertResolver) -> Vec<u8> {
    resolver.current.load().cert[0].to_vec()
}

#[test]
fn a_changed_certificate_is_picked_up_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("test-ca").unwrap();
    let first = ca.serving(&["localhost"]).unwrap();
    let cert = write(dir.path(), "tls.crt", &first.cert);
    let key = write(dir.path(), "tls.key", &first.key);
    let resolver = CertResolver::new(CertSource::Files { cert: cert.clone(), key: key.clone() }).unwrap();
    let original = serial_of(&resolver);
    assert!(!resolver.reload_if_changed().unwrap());

    // A mismatched pair (new cert, old key) is refused; the old one stays.
    std::thread::sleep(Duration::from_millis(20));
    let second = ca.serving(&["localhost"]).unwrap();
    write(dir.path(), "tls.crt", &second.cert);
    let err = resolver.reload_if_changed().unwrap_err();
    assert!(matches!(err, TlsError::Key(_)), "{err}");
    assert_eq!(serial_of(&resolver), original);

    // The matching key arrives: the new certificate is served.
    std::thread::sleep(Duration::from_millis(20));
    write(dir.path(), "tls.key", &second.key);
    assert!(resolver.reload_if_changed().unwrap());
    assert_ne!(serial_of(&resolver), original);

    // Garbage is refused with the flag named.
    std::thread::sleep(Duration::from_millis(20));
    write(dir.path(), "tls.crt", "not a certificate");
    let err = resolver.reload_if_changed().unwrap_err();
    assert!(err.to_string().contains("--tls-cert-file"), "{err}");
}

#[test]
fn client_ca_bundles_must_hold_a_certificate() {
    let ca = LocalCa::new("front-proxy-ca").unwrap();
    assert_eq!(
        root_store(ca.cert_pem.as_bytes(), Path::new("ca.crt"), "--requestheader-client-ca-file").unwrap().len(),
        1
    );
    let err = root_store(b"", Path::new("empty.crt"), "--requestheader-client-ca-file").unwrap_err();
    assert!(err.to_string().contains("--requestheader-client-ca-file"));
}
