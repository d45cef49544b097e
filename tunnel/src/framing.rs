//! The tunnel's request and response shapes, as HTTP/2 CONNECT (HBONE-like), without I/O.
//!
//! A stream is opened with `CONNECT <backend-ip>:<port>` and three headers naming where the
//! connection comes from. The answer is `200` (bytes flow both ways from then on) or a refusal
//! status with an `x-clustermesh-refused` header naming the reason.

use std::net::SocketAddr;

use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::metrics::InboundRefusal;

pub const SOURCE_CLUSTER: &str = "x-clustermesh-source-cluster";
pub const SOURCE_NODE: &str = "x-clustermesh-source-node";
pub const SOURCE_IDENTITY: &str = "x-clustermesh-source-identity";
pub const REFUSED: &str = "x-clustermesh-refused";

/// Why a request is not a tunnel CONNECT.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("method {0} is not CONNECT")]
    NotConnect(Method),
    #[error("CONNECT authority `{0}` is not a literal ip:port")]
    BadAuthority(String),
    #[error("header {0} is missing or not valid")]
    BadHeader(&'static str),
}

/// One CONNECT: which backend, on behalf of whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The backend's address in the receiving cluster.
    pub target: SocketAddr,
    pub source_cluster: String,
    pub source_node: String,
    /// The security identity ID of the client pod (0 when the agent does not know it).
    pub source_identity: u32,
}

impl ConnectRequest {
    pub fn to_http(&self) -> Request<()> {
        // `SocketAddr`'s Display brackets IPv6 addresses, which is the authority syntax.
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(self.target.to_string())
            .body(())
            .expect("an ip:port is a valid authority");
        let headers = request.headers_mut();
        // Names were validated as DNS labels/subdomains where they came from; a value that is
        // not a valid header is sent empty and refused by the receiver as a bad request.
        let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
        headers.insert(SOURCE_CLUSTER, value(&self.source_cluster));
        headers.insert(SOURCE_NODE, value(&self.source_node));
        headers.insert(SOURCE_IDENTITY, HeaderValue::from(self.source_identity));
        request
    }

    pub fn from_http<B>(request: &Request<B>) -> Result<Self, FramingError> {
        if request.method() != Method::CONNECT {
            return Err(FramingError::NotConnect(request.method().clone()));
        }
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str())
            .unwrap_or_default();
        // Only literal addresses: a name would make the receiver resolve on behalf of a peer.
        let target: SocketAddr = authority
            .parse()
            .map_err(|_| FramingError::BadAuthority(authority.to_owned()))?;
        let header = |name: &'static str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .ok_or(FramingError::BadHeader(name))
        };
        Ok(Self {
            target,
            source_cluster: header(SOURCE_CLUSTER)?.to_owned(),
            source_node: header(SOURCE_NODE)?.to_owned(),
            source_identity: header(SOURCE_IDENTITY)?
                .parse()
                .map_err(|_| FramingError::BadHeader(SOURCE_IDENTITY))?,
        })
    }
}

/// The status and header a refusal is answered with.
pub fn refusal_response(reason: InboundRefusal) -> Response<()> {
    let status = match reason {
        InboundRefusal::BadRequest => StatusCode::BAD_REQUEST,
        InboundRefusal::BackendUnreachable => StatusCode::BAD_GATEWAY,
        InboundRefusal::Draining => StatusCode::SERVICE_UNAVAILABLE,
        InboundRefusal::ClusterMismatch
        | InboundRefusal::ClusterNotConnected
        | InboundRefusal::NotSharedBackend
        | InboundRefusal::PolicyDenied => StatusCode::FORBIDDEN,
    };
    Response::builder()
        .status(status)
        .header(REFUSED, refusal_name(reason))
        .body(())
        .expect("static response")
}

pub fn accepted_response() -> Response<()> {
    Response::builder()
        .status(StatusCode::OK)
        .body(())
        .expect("static response")
}

/// The wire name of a refusal reason (stable: peers of other versions read it).
pub fn refusal_name(reason: InboundRefusal) -> &'static str {
    match reason {
        InboundRefusal::BadRequest => "bad-request",
        InboundRefusal::ClusterMismatch => "cluster-mismatch",
        InboundRefusal::ClusterNotConnected => "cluster-not-connected",
        InboundRefusal::NotSharedBackend => "not-shared-backend",
        InboundRefusal::PolicyDenied => "policy-denied",
        InboundRefusal::BackendUnreachable => "backend-unreachable",
        InboundRefusal::Draining => "draining",
    }
}

/// Reads the refusal out of a non-200 response, for logs on the sending side.
pub fn response_refusal<B>(response: &Response<B>) -> Option<String> {
    if response.status() == StatusCode::OK {
        return None;
    }
    let reason = response
        .headers()
        .get(REFUSED)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unspecified");
    Some(format!("{} ({reason})", response.status()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ConnectRequest {
        ConnectRequest {
            target: "[fd00::5]:8443".parse().unwrap(),
            source_cluster: "east".into(),
            source_node: "node-1".into(),
            source_identity: 65_793,
        }
    }

    #[test]
    fn round_trips_through_http() {
        let http = request().to_http();
        assert_eq!(http.uri().to_string(), "[fd00::5]:8443");
        assert_eq!(ConnectRequest::from_http(&http), Ok(request()));
    }

    #[test]
    fn refuses_names_and_other_methods() {
        let mut http = request().to_http();
        *http.uri_mut() = "backend.default.svc:80".parse().unwrap();
        assert!(matches!(
            ConnectRequest::from_http(&http),
            Err(FramingError::BadAuthority(_))
        ));
        let mut http = request().to_http();
        *http.method_mut() = Method::GET;
        assert!(matches!(
            ConnectRequest::from_http(&http),
            Err(FramingError::NotConnect(_))
        ));
        let mut http = request().to_http();
        http.headers_mut().remove(SOURCE_NODE);
        assert_eq!(
            ConnectRequest::from_http(&http),
            Err(FramingError::BadHeader(SOURCE_NODE))
        );
    }

    #[test]
    fn refusals_carry_their_reason() {
        let response = refusal_response(InboundRefusal::NotSharedBackend);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response_refusal(&response).as_deref(),
            Some("403 Forbidden (not-shared-backend)")
        );
        assert_eq!(response_refusal(&accepted_response()), None);
    }
}
