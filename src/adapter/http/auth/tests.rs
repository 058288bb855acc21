use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderValue;
use rustls::pki_types::pem::PemObject;

use super::*;
use crate::adapter::tls::LocalCa;

fn cert(cn: &str, orgs: &[&str]) -> CertificateDer<'static> {
    let pair = LocalCa::new("ca").unwrap().client(cn, orgs).unwrap();
    CertificateDer::from_pem_slice(pair.cert.as_bytes()).unwrap()
}

fn front_proxy(allowed: &[&str]) -> Authenticator {
    Authenticator::FrontProxy {
        allowed_names: allowed.iter().map(|s| s.to_string()).collect(),
        username_headers: vec!["X-Remote-User".into()],
        group_headers: vec!["X-Remote-Group".into()],
    }
}

#[test]
fn front_proxy_users_come_from_headers_of_allowed_certificates() {
    let mut headers = HeaderMap::new();
    headers.insert(
        "X-Remote-User",
        HeaderValue::from_static("system:serviceaccount:kube-system:horizontal-pod-autoscaler"),
    );
    headers.append("X-Remote-Group", HeaderValue::from_static("system:serviceaccounts"));
    headers.append("X-Remote-Group", HeaderValue::from_static("system:authenticated"));
    let aggregator = cert("front-proxy-client", &[]);
    let user = front_proxy(&["front-proxy-client"]).authenticate(Some(&aggregator), &headers).unwrap();
    assert_eq!(user.name, "system:serviceaccount:kube-system:horizontal-pod-autoscaler");
    assert_eq!(user.groups, ["system:serviceaccounts", "system:authenticated"]);

    let err = front_proxy(&["front-proxy-client"]).authenticate(Some(&cert("mallory", &[])), &headers).unwrap_err();
    assert_eq!(err.code, 401);
    assert!(err.message.contains("--requestheader-allowed-names"));

    let err = front_proxy(&[]).authenticate(Some(&aggregator), &HeaderMap::new()).unwrap_err();
    assert_eq!(err.code, 401);
    let err = front_proxy(&[]).authenticate(None, &headers).unwrap_err();
    assert_eq!((err.code.as_u16(), err.reason), (401, "Unauthorized"));
}

#[test]
fn client_certificates_name_user_and_groups() {
    let user = Authenticator::ClientCertificate
        .authenticate(Some(&cert("standalone-admin", &["system:masters"])), &HeaderMap::new())
        .unwrap();
    assert_eq!(user, User { name: "standalone-admin".into(), groups: vec!["system:masters".into()] });
}

#[test]
fn attributes_follow_the_request() {
    let route = crate::adapter::http::routes::route(
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ai-system-gpu/pods/%2A/nvidia_gpu_utilization_percent",
    )
    .unwrap();
    let attrs = Attributes::of(&route).unwrap();
    assert_eq!((attrs.verb, attrs.group, attrs.version), ("list", CUSTOM_GROUP, "v1beta2"));
    assert_eq!((attrs.resource.as_str(), attrs.subresource.as_str()), ("pods", "nvidia_gpu_utilization_percent"));
    assert_eq!((attrs.namespace.as_str(), attrs.name.as_str()), ("ai-system-gpu", ""));
    assert!(
        Attributes::of(&crate::adapter::http::routes::route("/apis/custom.metrics.k8s.io/v1beta1").unwrap()).is_none()
    );
}

/// A kube client whose apiserver answers every SubjectAccessReview with the
/// recorded response for `allowed`, counting calls.
fn recorded_apiserver(allowed: bool, calls: Arc<AtomicUsize>) -> kube::Client {
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let calls = calls.clone();
        async move {
            assert_eq!(req.method(), http::Method::POST);
            assert_eq!(req.uri().path(), "/apis/authorization.k8s.io/v1/subjectaccessreviews");
            let body = http_body_util::BodyExt::collect(req.into_body()).await.unwrap().to_bytes();
            let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(review["spec"]["resourceAttributes"]["group"], "custom.metrics.k8s.io");
            calls.fetch_add(1, Ordering::SeqCst);
            // As kube-apiserver answers, with the spec echoed and a status.
            let response = serde_json::json!({
                "kind": "SubjectAccessReview",
                "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": null},
                "spec": review["spec"],
                "status": if allowed {
                    serde_json::json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"hpa-custom-metrics\""})
                } else {
                    serde_json::json!({"allowed": false})
                },
            });
            let body = kube::client::Body::from(serde_json::to_vec(&response).unwrap());
            Ok::<_, std::convert::Infallible>(http::Response::builder().status(201).body(body).unwrap())
        }
    });
    kube::Client::new(service, "default")
}

fn attrs() -> Attributes {
    Attributes {
        verb: "list",
        group: CUSTOM_GROUP,
        version: "v1beta2",
        resource: "pods".into(),
        subresource: "nvidia_gpu_utilization_percent".into(),
        namespace: "ai-system-gpu".into(),
        name: String::new(),
    }
}

#[tokio::test]
async fn subject_access_review_allows_and_caches() {
    let calls = Arc::new(AtomicUsize::new(0));
    let authorizer =
        Authorizer::subject_access_review(recorded_apiserver(true, calls.clone()), Duration::from_secs(60));
    let user = User { name: "hpa".into(), groups: vec![] };
    authorizer.authorize(&user, &attrs()).await.unwrap();
    authorizer.authorize(&user, &attrs()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the second answer comes from the cache");
}

#[tokio::test]
async fn subject_access_review_denial_is_403() {
    let calls = Arc::new(AtomicUsize::new(0));
    let authorizer = Authorizer::subject_access_review(recorded_apiserver(false, calls), Duration::from_secs(60));
    let user = User { name: "system:anonymous".into(), groups: vec![] };
    let err = authorizer.authorize(&user, &attrs()).await.unwrap_err();
    assert_eq!((err.code.as_u16(), err.reason), (403, "Forbidden"));
    assert!(err.message.contains("system:anonymous") && err.message.contains("ai-system-gpu"), "{}", err.message);
}

#[tokio::test]
async fn an_unreachable_apiserver_is_503_never_allowed() {
    let service = tower::service_fn(|_req: http::Request<kube::client::Body>| async {
        Err::<http::Response<kube::client::Body>, _>(std::io::Error::other("connection refused"))
    });
    let authorizer = Authorizer::subject_access_review(kube::Client::new(service, "default"), Duration::from_secs(60));
    let err = authorizer.authorize(&User { name: "u".into(), groups: vec![] }, &attrs()).await.unwrap_err();
    assert_eq!(err.code.as_u16(), 503);
}
