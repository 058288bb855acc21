//! Who is asking, and may they: the aggregation layer's authentication
//! (front-proxy client certificates with `X-Remote-User`/`X-Remote-Group`)
//! and delegated authorization (a `SubjectAccessReview` per request, cached
//! briefly).
//!
//! `standalone` has no kube-apiserver in front: it authenticates clients by a
//! certificate from its own CA (user = CN, groups = O) and allows every
//! authenticated user.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;
use http::HeaderMap;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use rustls::pki_types::CertificateDer;

use super::routes::{CUSTOM_GROUP, CustomVersion, EXTERNAL_GROUP, Route, Target};
use super::status::ApiError;

/// Flags of authentication and authorization.
#[derive(Clone, Debug, Args)]
pub struct AuthArgs {
    /// CA bundle that signs front-proxy client certificates (default: read
    /// from the `kube-system/extension-apiserver-authentication` ConfigMap).
    #[arg(long, env = "KGM_REQUESTHEADER_CLIENT_CA_FILE")]
    pub requestheader_client_ca_file: Option<PathBuf>,

    /// Common names a front-proxy certificate may have (empty: any the CA
    /// signed). Read from the ConfigMap when the CA is.
    #[arg(long, env = "KGM_REQUESTHEADER_ALLOWED_NAMES", value_delimiter = ',')]
    pub requestheader_allowed_names: Vec<String>,

    /// Headers that carry the user name.
    #[arg(long, env = "KGM_REQUESTHEADER_USERNAME_HEADERS", value_delimiter = ',', default_value = "X-Remote-User")]
    pub requestheader_username_headers: Vec<String>,

    /// Headers that carry the user's groups.
    #[arg(long, env = "KGM_REQUESTHEADER_GROUP_HEADERS", value_delimiter = ',', default_value = "X-Remote-Group")]
    pub requestheader_group_headers: Vec<String>,

    /// How long a SubjectAccessReview answer is reused.
    #[arg(long, env = "KGM_AUTHORIZATION_CACHE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub authorization_cache_ttl: Duration,
}

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct User {
    /// User name.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
}

/// How requests are authenticated.
#[derive(Clone, Debug)]
pub enum Authenticator {
    /// The aggregation layer: a front-proxy certificate, and the user in headers.
    FrontProxy {
        /// Allowed certificate common names (empty: any).
        allowed_names: Vec<String>,
        /// User name headers, first present wins.
        username_headers: Vec<String>,
        /// Group headers, all values of all of them.
        group_headers: Vec<String>,
    },
    /// Direct clients: the certificate names the user (CN) and groups (O).
    ClientCertificate,
}

/// The subject CN and O values of a DER certificate.
fn subject_names(cert: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let orgs = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some((cn, orgs))
}

impl Authenticator {
    /// Authenticates a request by its verified client certificate (if any)
    /// and headers. Anything short of a user is 401.
    pub fn authenticate(&self, peer: Option<&CertificateDer<'_>>, headers: &HeaderMap) -> Result<User, ApiError> {
        let cert = peer.ok_or_else(|| ApiError::unauthorized("Unauthorized: a client certificate is required"))?;
        let (cn, orgs) = subject_names(cert)
            .ok_or_else(|| ApiError::unauthorized("Unauthorized: the client certificate has no common name"))?;
        match self {
            Authenticator::ClientCertificate => Ok(User { name: cn, groups: orgs }),
            Authenticator::FrontProxy { allowed_names, username_headers, group_headers } => {
                if !allowed_names.is_empty() && !allowed_names.contains(&cn) {
                    return Err(ApiError::unauthorized(format!(
                        "Unauthorized: front-proxy certificate {cn:?} is not in --requestheader-allowed-names"
                    )));
                }
                let name = username_headers
                    .iter()
                    .filter_map(|h| headers.get(h.as_str()))
                    .filter_map(|v| v.to_str().ok())
                    .find(|v| !v.is_empty())
                    .ok_or_else(|| ApiError::unauthorized("Unauthorized: front-proxy request without a user header"))?
                    .to_string();
                let groups = group_headers
                    .iter()
                    .flat_map(|h| headers.get_all(h.as_str()))
                    .filter_map(|v| v.to_str().ok())
                    .map(str::to_string)
                    .collect();
                Ok(User { name, groups })
            }
        }
    }
}

/// What a request does, as a SubjectAccessReview names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attributes {
    /// `get` for one object, `list` for `*` and external metrics.
    pub verb: &'static str,
    /// API group.
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// `pods`, `nodes`, `metrics`, or the external metric's name.
    pub resource: String,
    /// The metric, for pods and nodes.
    pub subresource: String,
    /// Namespace, if any.
    pub namespace: String,
    /// Object name, if one.
    pub name: String,
}

impl Attributes {
    /// The attributes of a query route; `None` for documents every
    /// authenticated user may read.
    pub fn of(route: &Route) -> Option<Attributes> {
        match route {
            Route::Custom { version, target, metric } => {
                let version = match version {
                    CustomVersion::V1beta1 => "v1beta1",
                    CustomVersion::V1beta2 => "v1beta2",
                };
                let (resource, subresource, namespace, name) = match target {
                    Target::Pods { namespace, name } => ("pods", metric.clone(), namespace.clone(), name.clone()),
                    Target::Nodes { name } => ("nodes", metric.clone(), String::new(), name.clone()),
                    Target::Namespace { namespace } => {
                        ("metrics", String::new(), namespace.clone(), Some(metric.clone()))
                    }
                };
                Some(Attributes {
                    verb: if name.is_some() { "get" } else { "list" },
                    group: CUSTOM_GROUP,
                    version,
                    resource: resource.to_string(),
                    subresource,
                    namespace,
                    name: name.unwrap_or_default(),
                })
            }
            Route::External { namespace, metric } => Some(Attributes {
                verb: "list",
                group: EXTERNAL_GROUP,
                version: "v1beta1",
                resource: metric.clone(),
                subresource: String::new(),
                namespace: namespace.clone(),
                name: String::new(),
            }),
            _ => None,
        }
    }
}

/// A cached answer: when it was had, and allowed or the denial's reason.
type CachedAnswer = (Instant, Result<(), String>);

/// The most SubjectAccessReview answers kept.
const MAX_CACHED: usize = 10_000;

/// Delegated authorization through kube-apiserver.
pub struct SubjectAccessReviewer {
    client: kube::Client,
    ttl: Duration,
    cache: Mutex<HashMap<(User, Attributes), CachedAnswer>>,
}

/// How requests are authorized.
pub enum Authorizer {
    /// Every authenticated user may read (standalone).
    AllowAll,
    /// A SubjectAccessReview per request, cached for a short time.
    SubjectAccessReview(SubjectAccessReviewer),
}

impl Authorizer {
    /// SubjectAccessReviews through `client`, each answer kept for `ttl`.
    pub fn subject_access_review(client: kube::Client, ttl: Duration) -> Self {
        Authorizer::SubjectAccessReview(SubjectAccessReviewer { client, ttl, cache: Mutex::new(HashMap::new()) })
    }

    /// 403 unless `user` may do what `attrs` describe; 503 if the answer
    /// cannot be had (never data).
    pub async fn authorize(&self, user: &User, attrs: &Attributes) -> Result<(), ApiError> {
        let Authorizer::SubjectAccessReview(reviewer) = self else { return Ok(()) };
        let key = (user.clone(), attrs.clone());
        let cached = {
            let cache = reviewer.cache.lock().expect("authorization cache lock is never poisoned");
            cache.get(&key).filter(|(at, _)| at.elapsed() < reviewer.ttl).map(|(_, answer)| answer.clone())
        };
        let answer = match cached {
            Some(answer) => answer,
            None => {
                let answer = reviewer.review(user, attrs).await?;
                let mut cache = reviewer.cache.lock().expect("authorization cache lock is never poisoned");
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
                cache.insert(key, (Instant::now(), answer.clone()));
                answer
            }
        };
        answer.map_err(|reason| {
            let target = if attrs.name.is_empty() {
                attrs.resource.clone()
            } else {
                format!("{}/{}", attrs.resource, attrs.name)
            };
            ApiError::forbidden(format!(
                "{} is forbidden: User {:?} cannot {} resource {:?} in API group {:?}{}{}",
                target,
                user.name,
                attrs.verb,
                attrs.resource,
                attrs.group,
                if attrs.namespace.is_empty() {
                    String::new()
                } else {
                    format!(" in the namespace {:?}", attrs.namespace)
                },
                if reason.is_empty() { String::new() } else { format!(": {reason}") },
            ))
        })
    }
}

impl SubjectAccessReviewer {
    async fn review(&self, user: &User, attrs: &Attributes) -> Result<Result<(), String>, ApiError> {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(attrs.verb.to_string()),
                    group: Some(attrs.group.to_string()),
                    version: Some(attrs.version.to_string()),
                    resource: some(&attrs.resource),
                    subresource: some(&attrs.subresource),
                    namespace: some(&attrs.namespace),
                    name: some(&attrs.name),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), &review).await.map_err(|e| {
            tracing::warn!(error = %e, "SubjectAccessReview failed");
            ApiError::unavailable(format!("authorization is unavailable: SubjectAccessReview failed: {e}"))
        })?;
        let status = answer.status.unwrap_or_default();
        Ok(if status.allowed && !status.denied.unwrap_or(false) {
            Ok(())
        } else {
            Err(status.reason.unwrap_or_default())
        })
    }
}

#[cfg(test)]
mod tests;
