//! The HTTP shell: TLS listener, bearer-token auth, routing, content negotiation and the
//! chunked watch stream. All decisions are made by [`super::handlers`] under one lock.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::discovery;
use super::errors::ApiError;
use super::handlers::{Deleted, State, WriteCtx};
use super::protobuf;
use super::rbac::{self, Attributes, AuditEntry, Decision, Policy, UserInfo};
use super::resources::{ResourceDef, STATUS_VERBS};
use super::selectors::{FieldSelector, LabelSelector, supported_fields};
use super::store::{Event, EventType};
use super::tables::{self, IncludeObject};

/// Response body type.
pub type Body = BoxBody<Bytes, Infallible>;

/// Store key of CustomResourceDefinitions.
const CRD_RESOURCE: &str = "apiextensions.k8s.io/customresourcedefinitions";

/// Largest request body accepted (kube-apiserver's limit).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// State shared by every connection.
pub struct Shared {
    /// Store and registry.
    pub state: Mutex<State>,
    /// The admin bearer token (group `system:masters`).
    pub token: String,
    /// Further bearer tokens and the users they authenticate as; their requests are
    /// authorized by RBAC.
    pub users: Mutex<HashMap<String, UserInfo>>,
    /// Every resource request of a non-`system:masters` user, allowed or denied.
    pub audit: Mutex<Vec<AuditEntry>>,
    /// Interval of BOOKMARK events.
    pub bookmark_interval: Duration,
    /// `host:port` advertised in `/api`.
    pub address: Mutex<String>,
}

impl Shared {
    /// Lock the state; a poisoned lock (a panic mid-write) is still usable: writes are
    /// single store calls, so no half-applied commit can be observed.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One listening generation: cancelling it closes the listener, every connection and watch.
pub struct Generation {
    /// Cancels this generation.
    pub cancel: CancellationToken,
    /// The accept loop.
    pub accept: JoinHandle<()>,
}

/// Bind `127.0.0.1:port` and serve until the generation is cancelled.
pub async fn listen(
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
    port: u16,
) -> std::io::Result<(Generation, u16)> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    let cancel = CancellationToken::new();
    let acceptor = TlsAcceptor::from(tls);
    let gen_cancel = cancel.clone();
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = gen_cancel.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let shared = shared.clone();
            let cancel = gen_cancel.clone();
            tokio::spawn(async move {
                let tls = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = acceptor.accept(tcp) => match r {
                        Ok(t) => t,
                        Err(e) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    },
                };
                let conn_cancel = cancel.clone();
                let svc = service_fn(move |req| {
                    let shared = shared.clone();
                    let cancel = conn_cancel.clone();
                    async move { Ok::<_, Infallible>(handle(shared, cancel, req).await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(tls), svc);
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    r = conn => if let Err(e) = r { debug!(%peer, error = %e, "connection ended"); },
                }
            });
        }
    });
    Ok((Generation { cancel, accept }, port))
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.to_status(),
    )
}

fn text_response(s: &'static str) -> Response<Body> {
    let mut r = Response::new(full(s));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(
    shared: Arc<Shared>,
    cancel: CancellationToken,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let resp = match route(&shared, &cancel, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    debug!(%method, %uri, status = resp.status().as_u16(), "request");
    resp
}

/// How the response body is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Plain objects.
    Json,
    /// `meta.k8s.io/v1 Table`.
    Table(IncludeObject),
    /// `PartialObjectMetadata(List)`.
    Metadata,
}

/// Pick the first media range we can produce.
pub fn negotiate(accept: &str, include: IncludeObject) -> Output {
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let ty = parts.next().unwrap_or("");
        let params: HashMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
        let json_like = matches!(ty, "application/json" | "*/*" | "application/*" | "");
        if !json_like {
            continue;
        }
        match params.get("as").copied() {
            Some("Table") if params.get("g").copied() == Some("meta.k8s.io") => {
                return Output::Table(include);
            }
            Some("PartialObjectMetadata") | Some("PartialObjectMetadataList") => {
                return Output::Metadata;
            }
            Some(_) => continue,
            None => return Output::Json,
        }
    }
    Output::Json
}

/// Whether the client accepts aggregated discovery (`apidiscovery.k8s.io/v2`), which
/// kube-apiserver answers first; kubectl asks for it on every discovery.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let params: Vec<&str> = range.split(';').map(str::trim).collect();
        params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

/// A parsed resource path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    /// Group (`""` core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Namespace from the path.
    pub namespace: Option<String>,
    /// Plural.
    pub plural: String,
    /// Object name.
    pub name: Option<String>,
    /// Subresource.
    pub sub: Option<String>,
}

/// Parse the part after `/api/v1` or `/apis/g/v`.
pub fn parse_resource_path(group: &str, version: &str, rest: &[&str]) -> Option<ResourcePath> {
    let (namespace, tail) = match rest {
        ["namespaces", ns, tail @ ..]
            if !(tail.is_empty()
                || (tail.len() == 1 && matches!(tail[0], "status" | "finalize"))) =>
        {
            (Some(ns.to_string()), tail)
        }
        _ => (None, rest),
    };
    let (plural, name, sub) = match tail {
        [p] => (p, None, None),
        [p, n] => (p, Some(n.to_string()), None),
        [p, n, s] => (p, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    if plural.is_empty() || name.as_deref() == Some("") {
        return None;
    }
    Some(ResourcePath {
        group: group.into(),
        version: version.into(),
        namespace,
        plural: plural.to_string(),
        name,
        sub,
    })
}

/// The admin's identity: kube-apiserver's cluster-admin group bypasses RBAC.
fn admin() -> UserInfo {
    UserInfo {
        name: "lodestone-admin".into(),
        groups: vec![rbac::MASTERS.into(), "system:authenticated".into()],
    }
}

/// The user a request's bearer token authenticates as.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Option<UserInfo> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?
        .trim();
    if token == shared.token {
        return Some(admin());
    }
    shared
        .users
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(token)
        .cloned()
}

/// The RBAC verb of a resource request, as kube-apiserver's RequestInfo names it; `None` for a
/// method no verb maps to (routing answers those with 405).
fn request_verb(
    method: &Method,
    named: bool,
    query: &HashMap<String, String>,
) -> Option<&'static str> {
    Some(match (method.clone(), named) {
        (Method::GET, false)
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            "watch"
        }
        (Method::GET, false) => "list",
        (Method::GET, true) => "get",
        (Method::POST, false) => "create",
        (Method::PUT, true) => "update",
        (Method::PATCH, true) => "patch",
        (Method::DELETE, true) => "delete",
        (Method::DELETE, false) => "deletecollection",
        _ => return None,
    })
}

/// The resource attributes of a request path, or `None` for a non-resource path.
fn resource_attributes(
    segs: &[&str],
    method: &Method,
    query: &HashMap<String, String>,
) -> Option<Attributes> {
    let rp = match segs {
        ["api", v, rest @ ..] if !rest.is_empty() => parse_resource_path("", v, rest)?,
        ["apis", g, v, rest @ ..] if !rest.is_empty() => parse_resource_path(g, v, rest)?,
        _ => return None,
    };
    let verb = request_verb(method, rp.name.is_some(), query)?;
    let mut name = rp.name.clone();
    // A list or watch pinned to one object by field selector is authorized for that name,
    // so resourceNames rules can grant it (as kube-apiserver does).
    if matches!(verb, "list" | "watch") {
        name = query.get("fieldSelector").and_then(|fs| {
            fs.split(',').find_map(|term| {
                let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
                (k.trim() == "metadata.name").then(|| v.trim().to_string())
            })
        });
    }
    // A Namespace is authorized inside itself, so a RoleBinding there can grant reading it.
    let namespace = match (&rp.namespace, rp.plural.as_str(), &rp.name) {
        (None, "namespaces", Some(n)) => Some(n.clone()),
        (ns, _, _) => ns.clone(),
    };
    Some(Attributes {
        verb: verb.into(),
        api_group: rp.group,
        resource: rp.plural,
        subresource: rp.sub,
        namespace,
        name,
    })
}

/// Authorize a request of a non-master user by RBAC, recording resource requests in the
/// audit log.
fn authorize_request(
    shared: &Shared,
    user: &UserInfo,
    segs: &[&str],
    path: &str,
    method: &Method,
    query: &HashMap<String, String>,
) -> Result<(), ApiError> {
    if user.is_master() {
        return Ok(());
    }
    let policy = Policy::from_store(&shared.lock().store);
    match resource_attributes(segs, method, query) {
        Some(a) => {
            let decision = rbac::authorize(&policy, user, &a);
            let allowed = matches!(decision, Decision::Allow(_));
            shared
                .audit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(AuditEntry::new(user, &a, allowed));
            if allowed {
                Ok(())
            } else {
                debug!(user = %user.name, verb = %a.verb, resource = %a.full_resource(), "RBAC: forbidden");
                Err(rbac::forbidden(user, &a))
            }
        }
        None => {
            let verb = method.as_str().to_ascii_lowercase();
            let allowed = rbac::discovery_path_allowed(&verb, path)
                || policy
                    .rules_for(user, None)
                    .iter()
                    .any(|(_, r)| rbac::rule_allows_path(r, &verb, path));
            if allowed {
                Ok(())
            } else {
                Err(rbac::forbidden_path(user, &verb, path))
            }
        }
    }
}

async fn route(
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Health and version are public, as with kube-apiserver's system:public-info-viewer.
    match segs.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => return Ok(text_response("ok")),
        ["version"] => return Ok(json_response(StatusCode::OK, &discovery::version())),
        _ => {}
    }
    let user = authenticate(shared, &parts.headers).ok_or_else(ApiError::unauthorized)?;
    authorize_request(shared, &user, &segs, &path, &parts.method, &query)?;
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError {
            code: 413,
            reason: "RequestEntityTooLarge",
            message: format!("request body: {e}"),
            details: None,
        })?
        .to_bytes();
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let get = parts.method == Method::GET;
    if get && matches!(segs.as_slice(), ["api"] | ["apis"]) && wants_aggregated(&accept) {
        let st = shared.lock();
        let doc = discovery::aggregated(&st.registry, segs == ["api"]);
        drop(st);
        let mut r = json_response(StatusCode::OK, &doc);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            ),
        );
        return Ok(r);
    }
    match segs.as_slice() {
        ["api"] if get => {
            let addr = shared
                .address
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            Ok(json_response(
                StatusCode::OK,
                &discovery::api_versions(&addr),
            ))
        }
        ["apis"] if get => Ok(json_response(
            StatusCode::OK,
            &discovery::group_list(&shared.lock().registry),
        )),
        ["apis", g] if get => discovery::group(&shared.lock().registry, g)
            .map(|v| json_response(StatusCode::OK, &v))
            .ok_or_else(ApiError::no_route),
        ["api", v] if get => discovery::resource_list(&shared.lock().registry, "", v)
            .map(|v| json_response(StatusCode::OK, &v))
            .ok_or_else(ApiError::no_route),
        ["apis", g, v] if get => discovery::resource_list(&shared.lock().registry, g, v)
            .map(|v| json_response(StatusCode::OK, &v))
            .ok_or_else(ApiError::no_route),
        ["openapi", "v2"] if get => Ok(openapi_v2(&accept)),
        ["openapi", "v3"] if get => {
            let st = shared.lock();
            Ok(json_response(
                StatusCode::OK,
                &discovery::openapi_v3_root(&st.registry, st.store.current_rv()),
            ))
        }
        ["openapi", "v3", rest @ ..] if get => {
            discovery::openapi_v3_gv(&shared.lock().registry, &rest.join("/"))
                .map(|v| json_response(StatusCode::OK, &v))
                .ok_or_else(ApiError::no_route)
        }
        ["api", v, rest @ ..] => {
            let rp = parse_resource_path("", v, rest).ok_or_else(ApiError::no_route)?;
            resource(
                shared,
                cancel,
                rp,
                &parts.method,
                &parts.headers,
                &query,
                &accept,
                &body,
            )
        }
        // Self-reviews answer for the requesting user: RBAC for added tokens, everything for
        // system:masters.
        [
            "apis",
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
        ] if parts.method == Method::POST => {
            // kubectl sends this review as protobuf, which the decoder does not cover; a
            // master is allowed everything whatever the spec says, so only others need it read.
            let review = match decode_body(&parts.headers, &body) {
                Ok(v) => v,
                Err(_) if user.is_master() => json!({}),
                Err(e) => return Err(e),
            };
            let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
            let (allowed, reason) = if user.is_master() {
                (true, format!("RBAC: allowed by group {}", rbac::MASTERS))
            } else {
                rbac::access_review(&Policy::from_store(&shared.lock().store), &user, &spec)
            };
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                        "metadata": {}, "spec": spec,
                        "status": {"allowed": allowed, "reason": reason}}),
            ))
        }
        ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"]
            if parts.method == Method::POST =>
        {
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {}, "status": {"userInfo": {"username": user.name,
                        "groups": user.groups}}}),
            ))
        }
        ["apis", g, v, rest @ ..] => {
            let rp = parse_resource_path(g, v, rest).ok_or_else(ApiError::no_route)?;
            resource(
                shared,
                cancel,
                rp,
                &parts.method,
                &parts.headers,
                &query,
                &accept,
                &body,
            )
        }
        _ => Err(ApiError::no_route()),
    }
}

fn openapi_v2(accept: &str) -> Response<Body> {
    if accept.contains("protobuf") {
        // An empty protobuf message is a valid, empty `openapi_v2.Document`: kubectl only needs
        // the download to succeed (it validates server-side, advertised in /openapi/v3).
        let mut r = Response::new(full(Bytes::new()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(
                "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
            ),
        );
        return r;
    }
    json_response(
        StatusCode::OK,
        &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": {}, "definitions": {}}),
    )
}

/// Objects are stored once; a read at another served version only differs in `apiVersion`.
pub fn present(def: &ResourceDef, mut obj: Value) -> Value {
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), json!(def.api_version()));
        o.insert("kind".into(), json!(def.kind));
    }
    obj
}

fn render_one(def: &ResourceDef, out: Output, obj: Value, rv: u64) -> Value {
    let obj = present(def, obj);
    match out {
        Output::Json => obj,
        Output::Metadata => tables::partial_metadata(&obj),
        Output::Table(inc) => tables::table(def, &[obj], Some(rv), inc, true),
    }
}

fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let base = ct.split(';').next().unwrap_or("").trim();
    match base {
        "application/json" | "" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}"))),
        "application/yaml" => serde_saphyr::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}"))),
        "application/vnd.kubernetes.protobuf" => protobuf::decode(body).map_err(|e| match e {
            protobuf::ProtobufError::Unsupported(_) => ApiError::unsupported_media_type(base),
            protobuf::ProtobufError::Malformed(m) => {
                ApiError::bad_request(format!("error decoding protobuf body: {m}"))
            }
        }),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn write_ctx(headers: &HeaderMap, query: &HashMap<String, String>) -> WriteCtx {
    // kube-apiserver's default manager: the user agent up to the first '/'.
    let manager = query.get("fieldManager").cloned().unwrap_or_else(|| {
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| {
                ua.split('/')
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(128)
                    .collect()
            })
            .unwrap_or_default()
    });
    let strict = query.get("fieldValidation").map(String::as_str) == Some("Strict");
    WriteCtx::new(manager, strict)
}

#[allow(clippy::too_many_arguments)]
fn resource(
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    rp: ResourcePath,
    method: &Method,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    accept: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let def = shared
        .lock()
        .registry
        .lookup(&rp.group, &rp.version, &rp.plural)
        .ok_or_else(ApiError::no_route)?;
    if (!def.namespaced && rp.namespace.is_some())
        || (def.namespaced && rp.name.is_some() && rp.namespace.is_none())
    {
        return Err(ApiError::no_route());
    }
    if let Some(sub) = &rp.sub
        && !(sub == "status" && def.status)
    {
        return Err(ApiError::no_route());
    }
    let dry_run = match query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid dry run value: {other:?}: supported values: \"All\""
            )));
        }
    };
    let verb = match (method.clone(), rp.name.is_some()) {
        (Method::GET, false)
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            "watch"
        }
        (Method::GET, false) => "list",
        (Method::GET, true) => "get",
        (Method::POST, false) => "create",
        (Method::PUT, true) => "update",
        (Method::PATCH, true) => "patch",
        (Method::DELETE, true) => "delete",
        (Method::DELETE, false) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    };
    let allowed = if rp.sub.is_some() {
        STATUS_VERBS.contains(&verb)
    } else {
        def.verbs.iter().any(|v| v == verb)
    };
    if !allowed {
        return Err(ApiError::method_not_allowed());
    }
    let ns = rp.namespace.as_deref();
    let out = negotiate(
        accept,
        IncludeObject::parse(query.get("includeObject").map(String::as_str)),
    );
    let name = rp.name.as_deref();
    let sub = rp.sub.as_deref();
    match (method.clone(), name) {
        (Method::GET, None) => {
            let labels =
                LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
                    .map_err(|e| {
                        ApiError::bad_request(format!("unable to parse requirement: {e}"))
                    })?;
            let fields = FieldSelector::parse(
                query.get("fieldSelector").map_or("", String::as_str),
                supported_fields(&def.group, &def.kind),
            )
            .map_err(ApiError::bad_request)?;
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
                return watch(
                    shared,
                    cancel,
                    def,
                    rp.namespace.clone(),
                    labels,
                    fields,
                    query,
                    out,
                );
            }
            let (items, rv) = shared.lock().list(&def, ns, &labels, &fields);
            crate::apiserver::handlers::check_list_version(
                query.get("resourceVersion").map(String::as_str),
                query.get("resourceVersionMatch").map(String::as_str),
                rv,
            )?;
            let items: Vec<Value> = items.into_iter().map(|o| present(&def, o)).collect();
            let v = match out {
                Output::Json => json!({"kind": def.list_kind, "apiVersion": def.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
                Output::Metadata => {
                    json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                    "metadata": {"resourceVersion": rv.to_string()},
                    "items": items.iter().map(tables::partial_metadata).collect::<Vec<_>>()})
                }
                Output::Table(inc) => tables::table(&def, &items, Some(rv), inc, true),
            };
            Ok(json_response(StatusCode::OK, &v))
        }
        (Method::GET, Some(n)) => {
            let st = shared.lock();
            let obj = st.get(&def, ns, n)?;
            let rv = st.store.current_rv();
            drop(st);
            Ok(json_response(
                StatusCode::OK,
                &render_one(&def, out, obj, rv),
            ))
        }
        (Method::POST, None) => {
            let obj = decode_body(headers, body)?;
            let ctx = write_ctx(headers, query);
            let (result, rv) = with_state(shared, dry_run, |st| {
                let r = st.create(&def, ns, obj, &ctx);
                (r, st.store.current_rv())
            });
            let created = result?;
            Ok(json_response(
                StatusCode::CREATED,
                &render_one(&def, out, created, rv),
            ))
        }
        (Method::PUT, Some(n)) => {
            let obj = decode_body(headers, body)?;
            let ctx = write_ctx(headers, query);
            let (result, rv) = with_state(shared, dry_run, |st| {
                let r = st.update(&def, ns, n, sub, obj, &ctx);
                (r, st.store.current_rv())
            });
            let updated = result?;
            Ok(json_response(
                StatusCode::OK,
                &render_one(&def, out, updated, rv),
            ))
        }
        (Method::PATCH, Some(n)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let ctx = write_ctx(headers, query);
            let force = query.get("force").map(String::as_str) == Some("true");
            let (result, rv) = with_state(shared, dry_run, |st| {
                let r = st.patch(&def, ns, n, sub, ct, body, force, &ctx);
                (r, st.store.current_rv())
            });
            let (obj, created) = result?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &render_one(&def, out, obj, rv)))
        }
        (Method::DELETE, Some(n)) if sub.is_none() => {
            let opts = if body.is_empty() {
                json!({})
            } else {
                decode_body(headers, body)?
            };
            let ctx = write_ctx(headers, query);
            // kubectl sends a delete's dryRun in the DeleteOptions body, not the query.
            let dry_run = dry_run || options_dry_run(&opts)?;
            let res = with_state(shared, dry_run, |st| st.delete(&def, ns, n, &opts, &ctx))?;
            match res {
                Deleted::Pending(o) => Ok(json_response(StatusCode::OK, &present(&def, o))),
                Deleted::Gone(o) => {
                    // As kube-apiserver: the stores of these kinds return the deleted object;
                    // the rest, custom resources included, a Status. (A CRD always goes through
                    // its finalizer there, answered with the object.)
                    let returns_object = (def.group.is_empty()
                        && matches!(def.kind.as_str(), "Service" | "Pod" | "Namespace"))
                        || (def.group == "apiextensions.k8s.io"
                            && def.kind == "CustomResourceDefinition");
                    if returns_object {
                        Ok(json_response(StatusCode::OK, &present(&def, o)))
                    } else {
                        let mut details = json!({"name": n, "kind": def.plural,
                            "uid": o.pointer("/metadata/uid").cloned().unwrap_or(Value::Null)});
                        if !def.group.is_empty() {
                            details["group"] = json!(def.group);
                        }
                        Ok(json_response(
                            StatusCode::OK,
                            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Success", "details": details}),
                        ))
                    }
                }
            }
        }
        (Method::DELETE, None) => {
            let opts = if body.is_empty() {
                json!({})
            } else {
                decode_body(headers, body)?
            };
            let dry_run = dry_run || options_dry_run(&opts)?;
            let labels =
                LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
                    .map_err(|e| {
                        ApiError::bad_request(format!("unable to parse requirement: {e}"))
                    })?;
            let fields = FieldSelector::parse(
                query.get("fieldSelector").map_or("", String::as_str),
                supported_fields(&def.group, &def.kind),
            )
            .map_err(ApiError::bad_request)?;
            let ctx = write_ctx(headers, query);
            let (gone, rv) = with_state(shared, dry_run, |st| {
                let (items, _) = st.list(&def, ns, &labels, &fields);
                let mut gone = Vec::new();
                for it in items {
                    let iname = it
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let ins = it
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .map(String::from);
                    match st.delete(&def, ins.as_deref(), &iname, &json!({}), &ctx) {
                        Ok(Deleted::Gone(o) | Deleted::Pending(o)) => gone.push(present(&def, o)),
                        Err(e) => return (Err(e), 0),
                    }
                }
                (Ok(gone), st.store.current_rv())
            });
            let gone = gone?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": def.list_kind, "apiVersion": def.api_version(),
                "metadata": {"resourceVersion": rv.to_string()}, "items": gone}),
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `DeleteOptions.dryRun`: `["All"]` or nothing.
fn options_dry_run(opts: &Value) -> Result<bool, ApiError> {
    match opts.get("dryRun").and_then(Value::as_array) {
        None => Ok(false),
        Some(v) if v.is_empty() => Ok(false),
        Some(v) if v.iter().all(|x| x == "All") => Ok(true),
        Some(v) => Err(ApiError::bad_request(format!(
            "Invalid dry run value: {v:?}: supported values: \"All\""
        ))),
    }
}

/// Run a write against the live state, or against a scratch copy for `dryRun=All`.
fn with_state<R>(shared: &Shared, dry_run: bool, f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard = shared.lock();
    if dry_run {
        let mut scratch = guard.scratch_copy();
        drop(guard);
        f(&mut scratch)
    } else {
        f(&mut guard)
    }
}

/// What a watcher sees of a committed event, given its scope and selectors: selector
/// transitions become ADDED/DELETED as kube-apiserver reports them.
pub fn filter_event<'a>(
    ev: &'a Event,
    resource: &str,
    ns: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<(EventType, &'a Value)> {
    if ev.resource != resource || ns.is_some_and(|n| n != ev.namespace) {
        return None;
    }
    let m = |o: &Value| labels.matches_object(o) && fields.matches(o);
    let now = m(&ev.object);
    let before = ev.previous.as_ref().is_some_and(m);
    match ev.kind {
        EventType::Added => now.then_some((EventType::Added, &ev.object)),
        EventType::Modified => match (before, now) {
            (true, true) => Some((EventType::Modified, &ev.object)),
            (false, true) => Some((EventType::Added, &ev.object)),
            (true, false) => Some((EventType::Deleted, &ev.object)),
            (false, false) => None,
        },
        EventType::Deleted => (before || now).then_some((EventType::Deleted, &ev.object)),
    }
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

struct Encoder {
    def: Arc<ResourceDef>,
    out: Output,
    first: bool,
}

impl Encoder {
    fn line(v: &Value) -> Bytes {
        let mut b = serde_json::to_vec(v).unwrap_or_default();
        b.push(b'\n');
        Bytes::from(b)
    }

    fn event(&mut self, ty: EventType, obj: &Value) -> Bytes {
        let obj = present(&self.def, obj.clone());
        let object = match self.out {
            Output::Json => obj,
            Output::Metadata => tables::partial_metadata(&obj),
            Output::Table(inc) => {
                let t = tables::table(&self.def, &[obj], None, inc, self.first);
                self.first = false;
                t
            }
        };
        Self::line(&json!({"type": ty.as_str(), "object": object}))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let (kind, api_version) = match self.out {
            Output::Metadata => (
                "PartialObjectMetadata".to_string(),
                "meta.k8s.io/v1".to_string(),
            ),
            _ => (self.def.kind.clone(), self.def.api_version()),
        };
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        Self::line(
            &json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": meta}}),
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn watch(
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    def: Arc<ResourceDef>,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    query: &HashMap<String, String>,
    out: Output,
) -> Result<Response<Body>, ApiError> {
    let rv_param = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let send_initial = query.get("sendInitialEvents").map(String::as_str) == Some("true");
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => Duration::from_secs(1800),
    };
    let resource = def.store_key();
    let mut enc = Encoder {
        def: def.clone(),
        out,
        first: true,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut initial: Vec<Bytes> = Vec::new();
    let (events, start_rv) = {
        let mut st = shared.lock();
        if send_initial || rv_param.is_empty() || rv_param == "0" {
            let (items, rv) = st.list(&def, ns.as_deref(), &labels, &fields);
            for o in &items {
                initial.push(enc.event(EventType::Added, o));
            }
            if send_initial {
                initial.push(enc.bookmark(rv, true));
            }
            (st.store.subscribe(), rv)
        } else {
            let from: u64 = rv_param.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid resource version {rv_param:?}"))
            })?;
            match st.store.watch_from(from) {
                Ok((backlog, rx)) => {
                    for ev in &backlog {
                        if let Some((ty, o)) =
                            filter_event(ev, &resource, ns.as_deref(), &labels, &fields)
                        {
                            initial.push(enc.event(ty, o));
                        }
                    }
                    let last = backlog.last().map_or(from, |e| e.rv);
                    (rx, last)
                }
                Err(e) => {
                    let line = Encoder::line(
                        &json!({"type": "ERROR", "object": ApiError::expired(e.requested, e.oldest).to_status()}),
                    );
                    let mut r = Response::new(full(line));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    return Ok(r);
                }
            }
        }
    };
    let crd_name = def.crd.as_ref().map(|c| c.crd_name.clone());
    let interval = shared.bookmark_interval;
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let mut events = events;
        for b in initial {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        let mut last_rv = start_rv;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            let line = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = &mut deadline => break,
                _ = tx.closed() => break,
                ev = events.recv() => match ev {
                    Some(ev) => {
                        last_rv = ev.rv;
                        // kube-apiserver ends watches of a custom resource when its CRD goes.
                        if let Some(crd) = &crd_name
                            && ev.kind == EventType::Deleted
                            && ev.resource == CRD_RESOURCE
                            && ev.object.pointer("/metadata/name").and_then(Value::as_str) == Some(crd.as_str())
                        {
                            break;
                        }
                        match filter_event(&ev, &resource, ns.as_deref(), &labels, &fields) {
                            Some((ty, o)) => enc.event(ty, o),
                            None => continue,
                        }
                    }
                    None => break,
                },
                _ = tick.tick(), if bookmarks => enc.bookmark(last_rv, false),
            };
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let p = parse_resource_path(
            "",
            "v1",
            &["namespaces", "default", "services", "web", "status"],
        )
        .unwrap();
        assert_eq!(p.namespace.as_deref(), Some("default"));
        assert_eq!(p.plural, "services");
        assert_eq!(p.name.as_deref(), Some("web"));
        assert_eq!(p.sub.as_deref(), Some("status"));
        let p = parse_resource_path("", "v1", &["namespaces", "default"]).unwrap();
        assert_eq!(
            (p.plural.as_str(), p.name.as_deref(), p.namespace),
            ("namespaces", Some("default"), None)
        );
        let p = parse_resource_path("", "v1", &["namespaces", "x", "status"]).unwrap();
        assert_eq!(p.sub.as_deref(), Some("status"));
        let p = parse_resource_path("", "v1", &["services"]).unwrap();
        assert!(p.namespace.is_none() && p.name.is_none());
        assert!(parse_resource_path("", "v1", &["a", "b", "c", "d"]).is_none());
    }

    #[test]
    fn aggregated_discovery_is_recognised() {
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json"));
        assert!(!wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
        ));
    }

    #[test]
    fn negotiation() {
        assert_eq!(
            negotiate(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
                IncludeObject::Metadata
            ),
            Output::Table(IncludeObject::Metadata)
        );
        assert_eq!(
            negotiate(
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
                IncludeObject::Metadata
            ),
            Output::Json
        );
        assert_eq!(
            negotiate(
                "application/vnd.kubernetes.protobuf, */*",
                IncludeObject::Metadata
            ),
            Output::Json
        );
        assert_eq!(
            negotiate(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                IncludeObject::Metadata
            ),
            Output::Metadata
        );
    }

    fn ev(kind: EventType, prev: Option<Value>, obj: Value) -> Event {
        Event {
            rv: 5,
            kind,
            resource: "/services".into(),
            namespace: "default".into(),
            object: obj,
            previous: prev,
        }
    }

    #[test]
    fn selector_transitions() {
        let sel = LabelSelector::parse("app=web").unwrap();
        let f = FieldSelector::default();
        let on = json!({"metadata": {"labels": {"app": "web"}}});
        let off = json!({"metadata": {"labels": {"app": "db"}}});
        let t = |e: &Event| filter_event(e, "/services", None, &sel, &f).map(|x| x.0);
        assert_eq!(
            t(&ev(EventType::Modified, Some(off.clone()), on.clone())),
            Some(EventType::Added)
        );
        assert_eq!(
            t(&ev(EventType::Modified, Some(on.clone()), off.clone())),
            Some(EventType::Deleted)
        );
        assert_eq!(
            t(&ev(EventType::Modified, Some(off.clone()), off.clone())),
            None
        );
        assert_eq!(
            t(&ev(EventType::Modified, Some(on.clone()), on.clone())),
            Some(EventType::Modified)
        );
        assert_eq!(t(&ev(EventType::Added, None, off.clone())), None);
        assert_eq!(
            filter_event(
                &ev(EventType::Added, None, on.clone()),
                "/services",
                Some("other"),
                &sel,
                &f
            ),
            None
        );
        assert_eq!(
            filter_event(&ev(EventType::Added, None, on), "/pods", None, &sel, &f),
            None
        );
    }
}
