//! A Kubernetes cluster as a CLI target: a kube-rs client for one kubeconfig context, server-
//! side apply of rendered objects, and the reads `enable`, `connect` and `status` need. Every
//! error is one sentence that names the context and says what to do.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

use crate::manifests::FIELD_MANAGER;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "cannot read the kubeconfig{}: {reason}; set KUBECONFIG or --kubeconfig to a kubeconfig file",
        path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default()
    )]
    Kubeconfig {
        path: Option<PathBuf>,
        reason: String,
    },
    #[error(
        "there is no context {context:?} in the kubeconfig (its contexts: {known}); pick one with `kubectl config get-contexts`, or use lab:<cluster> for a lab cluster"
    )]
    UnknownContext { context: String, known: String },
    #[error("the kubeconfig has no current context; pass --context (its contexts: {known})")]
    NoContext { known: String },
    #[error(
        "context {context}: the kubeconfig entry is not usable: {reason}; fix it with `kubectl config view`"
    )]
    BadContext { context: String, reason: String },
    #[error(
        "context {context}: cannot reach the Kubernetes API server at {url}: {reason}; is the cluster running and reachable from here (VPN, firewall, expired credentials)?"
    )]
    Unreachable {
        context: String,
        url: String,
        reason: String,
    },
    #[error(
        "context {context}: the Kubernetes API server refused to {action}: {message}; does your user have the rights (kubectl auth can-i)?"
    )]
    Refused {
        context: String,
        action: String,
        message: String,
    },
}

/// A kube client for one context.
#[derive(Clone)]
pub struct KubeTarget {
    pub context: String,
    pub url: String,
    client: kube::Client,
}

impl std::fmt::Debug for KubeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTarget")
            .field("context", &self.context)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The kind of an object we write, as kube-rs needs it.
fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "Namespace" => "namespaces".to_string(),
        "ServiceAccount" => "serviceaccounts".into(),
        "ClusterRole" => "clusterroles".into(),
        "ClusterRoleBinding" => "clusterrolebindings".into(),
        "ConfigMap" => "configmaps".into(),
        "Secret" => "secrets".into(),
        "Service" => "services".into(),
        "Deployment" => "deployments".into(),
        "DaemonSet" => "daemonsets".into(),
        "Node" => "nodes".into(),
        "Pod" => "pods".into(),
        other => format!("{}s", other.to_lowercase()),
    };
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural,
    }
}

fn cluster_scoped(kind: &str) -> bool {
    matches!(
        kind,
        "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "Node"
    )
}

/// What an apply did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Configured,
    Unchanged,
}

impl Applied {
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Created => "created",
            Applied::Configured => "configured",
            Applied::Unchanged => "unchanged",
        }
    }
}

impl KubeTarget {
    /// A client for `context` (the current context when `None`) of the kubeconfig at
    /// `kubeconfig` (else `KUBECONFIG`, else `~/.kube/config`). Checks nothing on the network.
    pub async fn connect(
        kubeconfig: Option<&PathBuf>,
        context: Option<&str>,
    ) -> Result<KubeTarget, KubeError> {
        let config_error = |reason: String| KubeError::Kubeconfig {
            path: kubeconfig.cloned(),
            reason,
        };
        let file = match kubeconfig {
            Some(path) => Kubeconfig::read_from(path),
            None => Kubeconfig::read(),
        }
        .map_err(|e| config_error(e.to_string()))?;
        let known = file
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let known = if known.is_empty() {
            "none".to_string()
        } else {
            known
        };
        let context = match context {
            Some(c) => c.to_string(),
            None => file
                .current_context
                .clone()
                .ok_or_else(|| KubeError::NoContext {
                    known: known.clone(),
                })?,
        };
        if !file.contexts.iter().any(|c| c.name == context) {
            return Err(KubeError::UnknownContext { context, known });
        }
        let options = KubeConfigOptions {
            context: Some(context.clone()),
            cluster: None,
            user: None,
        };
        let config = kube::Config::from_custom_kubeconfig(file, &options)
            .await
            .map_err(|e| KubeError::BadContext {
                context: context.clone(),
                reason: e.to_string(),
            })?;
        let url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(|e| KubeError::BadContext {
            context: context.clone(),
            reason: e.to_string(),
        })?;
        Ok(KubeTarget {
            context,
            url,
            client,
        })
    }

    /// One round trip, so an unreachable cluster is reported before anything else happens.
    pub async fn check_reachable(&self) -> Result<(), KubeError> {
        self.client
            .apiserver_version()
            .await
            .map(|_| ())
            .map_err(|e| self.error("read its version", e))
    }

    fn error(&self, action: &str, error: kube::Error) -> KubeError {
        match error {
            kube::Error::Api(status) => KubeError::Refused {
                context: self.context.clone(),
                action: action.to_string(),
                message: status.message,
            },
            other => KubeError::Unreachable {
                context: self.context.clone(),
                url: self.url.clone(),
                reason: error_chain(&other),
            },
        }
    }

    fn api(&self, api_version: &str, kind: &str, namespace: &str) -> Api<DynamicObject> {
        let resource = api_resource(api_version, kind);
        if cluster_scoped(kind) {
            Api::all_with(self.client.clone(), &resource)
        } else {
            Api::namespaced_with(self.client.clone(), namespace, &resource)
        }
    }

    /// Reads one object; `None` if it does not exist.
    pub async fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, KubeError> {
        let api = self.api(api_version, kind, namespace);
        match api.get_opt(name).await {
            Ok(object) => Ok(object.map(|o| serde_json::to_value(o).unwrap_or_default())),
            Err(e) => Err(self.error(&format!("read {kind} {namespace}/{name}"), e)),
        }
    }

    /// The data of a Secret, decoded; `None` if the Secret does not exist.
    pub async fn secret_data(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, KubeError> {
        let Some(secret) = self.get("v1", "Secret", namespace, name).await? else {
            return Ok(None);
        };
        let data: BTreeMap<String, k8s_openapi::ByteString> =
            serde_json::from_value(secret["data"].clone()).unwrap_or_default();
        Ok(Some(
            data.into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect(),
        ))
    }

    /// Every object of a kind in a namespace.
    pub async fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
    ) -> Result<Vec<Value>, KubeError> {
        let api = self.api(api_version, kind, namespace);
        let list = api
            .list(&Default::default())
            .await
            .map_err(|e| self.error(&format!("list {kind} in {namespace}"), e))?;
        Ok(list
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .collect())
    }

    /// Server-side apply of one object (field manager `clustermesh`, taking over fields
    /// another manager set). Says whether anything changed.
    pub async fn apply(&self, object: &Value) -> Result<Applied, KubeError> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let before = self.get(api_version, kind, namespace, name).await?;
        let api = self.api(api_version, kind, namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let after = api
            .patch(name, &params, &Patch::Apply(object))
            .await
            .map_err(|e| self.error(&format!("apply {kind} {namespace}/{name}"), e))?;
        let version = |o: &Value| o["metadata"]["resourceVersion"].as_str().map(str::to_owned);
        Ok(match before {
            None => Applied::Created,
            Some(before) if version(&before) == after.metadata.resource_version => {
                Applied::Unchanged
            }
            Some(_) => Applied::Configured,
        })
    }

    /// The API server's clock, from the `Date` header of a `GET /version`.
    pub async fn server_date(&self) -> Result<std::time::SystemTime, KubeError> {
        let request = http::Request::get("/version")
            .body(kube::client::Body::empty())
            .expect("a constant request is valid");
        let response = self
            .client
            .send(request)
            .await
            .map_err(|e| self.error("read its clock", e))?;
        let header = response
            .headers()
            .get(http::header::DATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        parse_http_date(&header).ok_or_else(|| KubeError::Refused {
            context: self.context.clone(),
            action: "tell its clock".into(),
            message: format!("no usable Date header ({header:?})"),
        })
    }

    /// Deletes one object; returns whether it existed.
    pub async fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<bool, KubeError> {
        let api = self.api(api_version, kind, namespace);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(e) => Err(self.error(&format!("delete {kind} {namespace}/{name}"), e)),
        }
    }
}

/// `Sat, 05 Dec 2026 08:25:32 GMT` (RFC 9110 IMF-fixdate).
pub fn parse_http_date(text: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, clock, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as u8 + 1;
    let date = time::Date::from_calendar_date(
        year.parse().ok()?,
        time::Month::try_from(month).ok()?,
        day.parse().ok()?,
    )
    .ok()?;
    let mut hms = clock.split(':').map(|p| p.parse::<u8>().ok());
    let time = time::Time::from_hms(hms.next()??, hms.next()??, hms.next()??).ok()?;
    let secs = date.with_time(time).assume_utc().unix_timestamp();
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).ok()?))
}

/// An error with its sources, on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_dates_parse() {
        let t = super::parse_http_date("Sat, 05 Dec 2026 08:25:32 GMT").unwrap();
        assert_eq!(
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
            1_796_459_132
        );
        assert!(super::parse_http_date("yesterday").is_none());
    }
}
