//! The method registry: every crate's JSON-RPC methods, their typed parameters and
//! help text, plus the per-subsystem config providers that `save_config` walks.
//!
//! Built once at start-up (each crate calls its own `register_rpcs(&mut Registry)`),
//! then handed to the [`Server`](super::server::Server) and to
//! [`load_config`](super::config::load_config). After that it is only read, so it is
//! `Send + Sync` and handlers must be too. Handlers run on the management ("app")
//! thread that polls the server, never on a data-path reactor: a handler that must
//! touch a reactor's state sends it a message (`engine::reactor::send_msg`) and, if it
//! must wait for the answer, returns [`Reply::Later`] instead of blocking.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{RpcError, INVALID_STATE, METHOD_NOT_FOUND};
use super::request::{show, Request};

/// What a handler produces once it is done.
pub type RpcResult = Result<Value, RpcError>;

/// A handler's answer: now, or later (polled by the server on every `poll()` until it
/// yields a result; the connection's later requests wait behind it, so responses stay
/// in request order).
pub enum Reply {
    Ready(RpcResult),
    Later(Box<dyn Deferred>),
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            Reply::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// A result that is not ready yet. `poll` is called on the management thread; it
/// must return quickly (`None` = still waiting).
pub trait Deferred: Send {
    fn poll(&mut self) -> Option<RpcResult>;
}

impl<F: FnMut() -> Option<RpcResult> + Send> Deferred for F {
    fn poll(&mut self) -> Option<RpcResult> {
        self()
    }
}

/// SPDK's RPC states: some methods are only valid before the framework is
/// initialised (`--wait-for-rpc`), most only after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum RpcState {
    Startup = 1,
    Runtime = 2,
}

/// In which states a method may be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateMask(u8);

impl StateMask {
    pub const STARTUP: StateMask = StateMask(RpcState::Startup as u8);
    pub const RUNTIME: StateMask = StateMask(RpcState::Runtime as u8);
    pub const ANY: StateMask = StateMask(RpcState::Startup as u8 | RpcState::Runtime as u8);

    pub fn allows(self, state: RpcState) -> bool {
        self.0 & state as u8 != 0
    }
}

/// Shared view of the framework state, cheap to clone into a [`Deferred`].
#[derive(Debug, Clone)]
pub struct StateCell(Arc<AtomicU8>);

impl StateCell {
    pub fn get(&self) -> RpcState {
        // Relaxed: the state is a flag read by polling, it orders no other data.
        match self.0.load(Ordering::Relaxed) {
            1 => RpcState::Startup,
            _ => RpcState::Runtime,
        }
    }
    pub fn set(&self, state: RpcState) {
        self.0.store(state as u8, Ordering::Relaxed);
    }
}

type RawHandler = Box<dyn Fn(&Registry, Option<Value>) -> Reply + Send + Sync>;

/// What is known about a method, for `rpc_get_methods` and the docs.
#[derive(Debug, Clone)]
pub struct MethodInfo {
    pub name: String,
    /// One line of help.
    pub help: String,
    /// The parameter names (fields of the params struct), in declaration order;
    /// empty for a method without parameters.
    pub params: Vec<&'static str>,
    /// True if the params type accepts an absent `params` member.
    pub params_optional: bool,
    pub states: StateMask,
    /// For an alias: the method it stands for.
    pub alias_of: Option<String>,
}

struct Method {
    info: MethodInfo,
    handler: Arc<RawHandler>,
}

/// One config-file entry: the call that recreates a piece of state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigEntry {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
}

type ConfigProvider = Box<dyn Fn() -> Vec<ConfigEntry> + Send + Sync>;

struct Subsystem {
    name: String,
    depends_on: Vec<String>,
    provider: ConfigProvider,
}

/// Called by `spdk_kill_instance` with a signal number.
pub type KillHandler = Box<dyn Fn(i32) + Send + Sync>;

/// All registered methods and config providers. See the module docs for threading.
pub struct Registry {
    methods: BTreeMap<String, Method>,
    subsystems: Vec<Subsystem>,
    state: StateCell,
    kill: KillHandler,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("methods", &self.methods.keys().collect::<Vec<_>>())
            .field(
                "subsystems",
                &self.subsystems.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .field("state", &self.state.get())
            .finish()
    }
}

/// Builder returned by the `register*` calls to adjust a method just registered.
pub struct MethodBuilder<'a> {
    info: &'a mut MethodInfo,
}

impl MethodBuilder<'_> {
    /// Allow the method in these states (default: runtime only, as most SPDK methods).
    pub fn states(self, states: StateMask) -> Self {
        self.info.states = states;
        self
    }
}

impl Registry {
    /// An empty registry in the runtime state, whose kill handler signals this process.
    pub fn new() -> Self {
        Registry {
            methods: BTreeMap::new(),
            subsystems: Vec::new(),
            state: StateCell(Arc::new(AtomicU8::new(RpcState::Runtime as u8))),
            kill: Box::new(signal_self),
        }
    }

    /// Register `name` with a handler taking typed params `P` and returning `R`.
    ///
    /// `P` decodes from the request's `params` (use `()` for none, a struct with
    /// `#[serde(deny_unknown_fields)]` otherwise, `Option<_>` fields for optional
    /// parameters). Decoding errors become `-32602` naming the parameter and value.
    /// Panics if `name` is already registered (a programming error at start-up).
    pub fn register<P, R, F>(&mut self, name: &str, help: &str, f: F) -> MethodBuilder<'_>
    where
        P: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(P) -> Result<R, RpcError> + Send + Sync + 'static,
    {
        self.register_with(name, help, move |_: &Registry, p: P| f(p))
    }

    /// Like [`Registry::register`] for handlers that need the registry itself.
    pub fn register_with<P, R, F>(&mut self, name: &str, help: &str, f: F) -> MethodBuilder<'_>
    where
        P: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(&Registry, P) -> Result<R, RpcError> + Send + Sync + 'static,
    {
        self.register_deferred(name, help, move |reg: &Registry, p: P| {
            Reply::Ready(
                f(reg, p).and_then(|r| serde_json::to_value(r).map_err(|e| RpcError::internal(format!("result: {e}")))),
            )
        })
    }

    /// Register a handler that may answer later ([`Reply::Later`]).
    pub fn register_deferred<P, F>(&mut self, name: &str, help: &str, f: F) -> MethodBuilder<'_>
    where
        P: DeserializeOwned + 'static,
        F: Fn(&Registry, P) -> Reply + Send + Sync + 'static,
    {
        let (params, params_optional) = probe_params::<P>();
        let handler: RawHandler = Box::new(
            move |reg: &Registry, raw: Option<Value>| match decode_params::<P>(raw) {
                Ok(p) => f(reg, p),
                Err(e) => Reply::Ready(Err(e)),
            },
        );
        self.insert(
            MethodInfo {
                name: name.to_string(),
                help: help.to_string(),
                params,
                params_optional,
                states: StateMask::RUNTIME,
                alias_of: None,
            },
            Arc::new(handler),
        )
    }

    /// Register `alias` as another (deprecated) name for the existing `target`.
    /// Panics if `target` is unknown or `alias` taken.
    pub fn register_alias(&mut self, alias: &str, target: &str) {
        let m = self
            .methods
            .get(target)
            .unwrap_or_else(|| panic!("alias {alias}: no method {target}"));
        let mut info = m.info.clone();
        let handler = m.handler.clone();
        info.name = alias.to_string();
        info.alias_of = Some(target.to_string());
        self.insert(info, handler);
    }

    fn insert(&mut self, info: MethodInfo, handler: Arc<RawHandler>) -> MethodBuilder<'_> {
        let name = info.name.clone();
        assert!(
            !self.methods.contains_key(&name),
            "JSON-RPC method {name} registered twice"
        );
        let m = self.methods.entry(name).or_insert(Method { info, handler });
        MethodBuilder { info: &mut m.info }
    }

    /// Register a subsystem for `save_config` / `framework_get_subsystems`: `provider`
    /// returns the calls that recreate its current state, in the order to replay them.
    /// Subsystems are saved in registration order (register dependencies first).
    /// Panics if `name` is already registered.
    pub fn register_config_provider(
        &mut self,
        name: &str,
        depends_on: &[&str],
        provider: impl Fn() -> Vec<ConfigEntry> + Send + Sync + 'static,
    ) {
        assert!(
            self.subsystems.iter().all(|s| s.name != name),
            "config subsystem {name} registered twice"
        );
        self.subsystems.push(Subsystem {
            name: name.to_string(),
            depends_on: depends_on.iter().map(|s| s.to_string()).collect(),
            provider: Box::new(provider),
        });
    }

    /// Replace what `spdk_kill_instance` does with the signal number (default:
    /// `kill(getpid(), sig)`, which the binary's signal handler turns into shutdown).
    pub fn set_kill_handler(&mut self, f: impl Fn(i32) + Send + Sync + 'static) {
        self.kill = Box::new(f);
    }

    pub(crate) fn kill(&self, signal: i32) {
        (self.kill)(signal)
    }

    /// The framework state shared with deferred handlers.
    pub fn state(&self) -> &StateCell {
        &self.state
    }

    /// Info on every method, sorted by name.
    pub fn methods(&self) -> impl Iterator<Item = &MethodInfo> {
        self.methods.values().map(|m| &m.info)
    }

    /// Info on one method.
    pub fn method(&self, name: &str) -> Option<&MethodInfo> {
        self.methods.get(name).map(|m| &m.info)
    }

    /// Subsystem names and dependencies, in registration order.
    pub fn subsystems(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.subsystems
            .iter()
            .map(|s| (s.name.as_str(), s.depends_on.as_slice()))
    }

    /// The config entries of one subsystem, `None` if it is not registered.
    pub fn subsystem_config(&self, name: &str) -> Option<Vec<ConfigEntry>> {
        self.subsystems.iter().find(|s| s.name == name).map(|s| (s.provider)())
    }

    /// Run one request's method. Called on the management thread by the server and
    /// by `load_config`.
    pub fn dispatch(&self, req: &Request) -> Reply {
        self.call(&req.method, req.params.clone())
    }

    /// Run `method` with raw `params`.
    pub fn call(&self, method: &str, params: Option<Value>) -> Reply {
        let Some(m) = self.methods.get(method) else {
            return Reply::Ready(Err(RpcError::new(
                METHOD_NOT_FOUND,
                format!("Method not found: {method}"),
            )));
        };
        let state = self.state.get();
        if !m.info.states.allows(state) {
            let msg = match state {
                RpcState::Startup => {
                    format!("Method {method} may only be called after the framework is initialized")
                }
                RpcState::Runtime => format!("Method {method} may only be called before the framework is initialized"),
            };
            return Reply::Ready(Err(RpcError::new(INVALID_STATE, msg)));
        }
        (m.handler)(self, params)
    }

    /// Run `method` to completion, polling a deferred reply at most `polls_max` times
    /// with `pause` between polls. For start-up config loading and tests, never on
    /// the server's poller.
    pub fn call_blocking(
        &self,
        method: &str,
        params: Option<Value>,
        polls_max: u32,
        pause: std::time::Duration,
    ) -> RpcResult {
        match self.call(method, params) {
            Reply::Ready(r) => r,
            Reply::Later(mut d) => {
                for _ in 0..polls_max {
                    if let Some(r) = d.poll() {
                        return r;
                    }
                    std::thread::sleep(pause);
                }
                Err(RpcError::internal(format!("{method} did not complete")))
            }
        }
    }
}

fn signal_self(signal: i32) {
    // SAFETY: kill(2) on our own pid takes only integers and touches no memory of
    // ours; an invalid signal number just returns EINVAL.
    unsafe {
        libc::kill(libc::getpid(), signal);
    }
}

/// Decode a request's `params` into `P`.
///
/// An absent `params` is tried as `null` (for `()` and `Option<_>`) and then as `{}`
/// (for structs whose fields are all optional); an empty `{}` or `[]` is also
/// accepted by methods without parameters. Errors name the parameter path and the
/// value received: `-32602 Invalid parameters: num_blocks: invalid type: string
/// "x", expected u64`, `… unknown field `foo` (received 1), expected one of …`.
pub fn decode_params<P: DeserializeOwned>(params: Option<Value>) -> Result<P, RpcError> {
    let value = params.unwrap_or(Value::Null);
    let first = match decode_one::<P>(&value) {
        Ok(p) => return Ok(p),
        Err(e) => e,
    };
    let retry = match &value {
        Value::Null => Some(Value::Object(Map::new())),
        Value::Object(o) if o.is_empty() => Some(Value::Null),
        Value::Array(a) if a.is_empty() => Some(Value::Null),
        _ => None,
    };
    if let Some(retry) = retry {
        match decode_one::<P>(&retry) {
            Ok(p) => return Ok(p),
            // With no params at all, "missing field `x`" says more than "expected struct".
            Err(e) if value.is_null() => return Err(RpcError::invalid_params(e)),
            Err(_) => {}
        }
    }
    Err(RpcError::invalid_params(first))
}

fn decode_one<P: DeserializeOwned>(value: &Value) -> Result<P, String> {
    serde_path_to_error::deserialize::<_, P>(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        // For an unknown field the path ends with that field: show the value found
        // there and prefix only the path of the object that holds it.
        let (prefix, inner) = match unknown_field_detail(&inner, value, &path) {
            Some((parent, detail)) => (parent, detail),
            None => (path.clone(), inner),
        };
        if prefix.is_empty() || prefix == "." {
            if value.is_null() {
                format!("{inner} (no params given)")
            } else {
                inner
            }
        } else {
            format!("{prefix}: {inner}")
        }
    })
}

/// serde says "unknown field `foo`, expected …" without the value: add it.
/// Returns (path of the holding object, message with the value).
fn unknown_field_detail(msg: &str, root: &Value, path: &str) -> Option<(String, String)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    let field = &rest[..end];
    let mut segments: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
    if segments.last() == Some(&field) {
        segments.pop();
    }
    let mut obj = root;
    for seg in &segments {
        obj = obj.get(seg)?;
    }
    let received = obj.get(field)?;
    Some((
        segments.join("."),
        format!(
            "unknown field `{field}` (received {}){}",
            show(received),
            &rest[end + 1..]
        ),
    ))
}

/// Find the field names of a params type without a value of it, by watching what
/// `P::deserialize` asks for. Returns (field names, accepts absent params).
fn probe_params<P: DeserializeOwned>() -> (Vec<&'static str>, bool) {
    let fields = Cell::new(None);
    let _ = P::deserialize(Probe { fields: &fields });
    let optional = decode_params::<P>(None).is_ok();
    (fields.get().map(|f| f.to_vec()).unwrap_or_default(), optional)
}

struct Probe<'a> {
    fields: &'a Cell<Option<&'static [&'static str]>>,
}

#[derive(Debug)]
struct ProbeDone;

impl fmt::Display for ProbeDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probe done")
    }
}
impl std::error::Error for ProbeDone {}
impl de::Error for ProbeDone {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        ProbeDone
    }
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = ProbeDone;

    fn deserialize_any<V: Visitor<'de>>(self, _v: V) -> Result<V::Value, ProbeDone> {
        Err(ProbeDone)
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeDone> {
        v.visit_some(self)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, v: V) -> Result<V::Value, ProbeDone> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _v: V,
    ) -> Result<V::Value, ProbeDone> {
        self.fields.set(Some(fields));
        Err(ProbeDone)
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::error::INVALID_PARAMS;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Create {
        name: String,
        num_blocks: u64,
        block_size: Option<u32>,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields)]
    struct AllOptional {
        current: Option<bool>,
    }

    fn err<P: DeserializeOwned + fmt::Debug>(v: Value) -> String {
        let e = decode_params::<P>(Some(v)).unwrap_err();
        assert_eq!(e.code, INVALID_PARAMS);
        e.message
    }

    #[test]
    fn errors_name_the_parameter_and_value() {
        let m = err::<Create>(json!({"name": "a", "num_blocks": "x"}));
        assert!(m.contains("num_blocks") && m.contains("\"x\""), "{m}");
        let m = err::<Create>(json!({"name": "a", "num_blocks": 1, "foo": 5}));
        assert!(m.contains("`foo`") && m.contains("received 5"), "{m}");
        let m = err::<Create>(json!({"name": "a"}));
        assert!(m.contains("missing field `num_blocks`"), "{m}");
        let m = err::<Create>(json!({"name": "a", "num_blocks": -1}));
        assert!(m.contains("num_blocks") && m.contains("-1"), "{m}");
        let e = decode_params::<Create>(None).unwrap_err();
        assert!(e.message.contains("missing field `name`"), "{}", e.message);
    }

    #[test]
    fn absent_and_empty_params() {
        assert_eq!(decode_params::<AllOptional>(None).unwrap(), AllOptional::default());
        decode_params::<()>(None).unwrap();
        decode_params::<()>(Some(json!({}))).unwrap();
        decode_params::<()>(Some(json!([]))).unwrap();
        let m = err::<()>(json!({"x": 1}));
        assert!(m.contains("Invalid parameters"), "{m}");
        assert_eq!(decode_params::<Option<AllOptional>>(None).unwrap(), None);
        // Positional params fill fields in order, as JSON-RPC allows.
        assert_eq!(
            decode_params::<Create>(Some(json!(["n", 8, null]))).unwrap(),
            Create {
                name: "n".into(),
                num_blocks: 8,
                block_size: None
            }
        );
    }

    #[test]
    fn probe_finds_field_names() {
        assert_eq!(
            probe_params::<Create>(),
            (vec!["name", "num_blocks", "block_size"], false)
        );
        assert_eq!(probe_params::<Option<AllOptional>>(), (vec!["current"], true));
        assert_eq!(probe_params::<()>(), (vec![], true));
    }

    #[test]
    fn dispatch_checks_method_and_state() {
        let mut r = Registry::new();
        r.register("echo", "Echo", |p: Create| Ok(p.num_blocks));
        r.register("early", "Startup only", |_: ()| Ok(true))
            .states(StateMask::STARTUP);
        let Reply::Ready(res) = r.call("echo", Some(json!({"name":"a","num_blocks":3}))) else {
            panic!()
        };
        assert_eq!(res.unwrap(), json!(3));
        let Reply::Ready(Err(e)) = r.call("nope", None) else {
            panic!()
        };
        assert_eq!(e.code, METHOD_NOT_FOUND);
        assert!(e.message.contains("nope"));
        let Reply::Ready(Err(e)) = r.call("early", None) else {
            panic!()
        };
        assert_eq!(e.code, INVALID_STATE);
        r.state().set(RpcState::Startup);
        let Reply::Ready(Err(e)) = r.call("echo", Some(json!({"name":"a","num_blocks":3}))) else {
            panic!()
        };
        assert_eq!(e.code, INVALID_STATE);
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn duplicate_method_is_a_bug() {
        let mut r = Registry::new();
        r.register("a", "", |_: ()| Ok(()));
        r.register("a", "", |_: ()| Ok(()));
    }
}
