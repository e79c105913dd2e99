//! kube-apiserver's static cost estimate of a CRD's `x-kubernetes-validations` rules, and the
//! budgets it enforces when the CRD is created: a rule may cost at most 10,000,000 units (times
//! the number of times its node can occur), all rules of a schema together 100,000,000.
//!
//! Written by hand because no crate does it: `kube-cel`'s `estimate_rule_cost` is a coarse
//! heuristic with other defaults (it accepted rules kube-apiserver refuses). This follows
//! cel-go's `checker/cost.go` and the Kubernetes CEL library's estimator for what CRD rules use:
//! sizes from `maxItems`, `maxProperties` and `maxLength` (a string without one is taken to be as
//! long as a 3 MiB request), string traversal at 0.1 per byte, comprehensions as range size times
//! loop cost, and the Kubernetes functions (`split`, `isIP`, `isCIDR`, ...). Without cel-go's
//! type checker, types come from the schema and the functions' result types; an unknown function
//! costs 1 plus its arguments, as cel-go charges any O(1) call. The figures were checked against
//! kube-apiserver 1.32.13 (the tests below list the limits it reported), including its quirk of
//! sizing an element of a computed list (`s.split('-')[0]`) as the rule's own `self`.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use kube_cel::cel::common::ast::{
    ComprehensionExpr, EntryExpr, Expr, IdedExpr, LiteralValue, operators,
};
use serde_json::Value;

/// The largest request kube-apiserver accepts; unbounded lists and strings are sized from it.
const MAX_REQUEST_SIZE_BYTES: u64 = 3 * 1024 * 1024;
/// The most one rule may cost (`StaticEstimatedCostLimit`).
pub const RULE_COST_LIMIT: u64 = 10_000_000;
/// The most all rules of one schema may cost together (`StaticEstimatedCRDCostLimit`).
pub const SCHEMA_COST_LIMIT: u64 = 100_000_000;
const STRING_TRAVERSAL: f64 = 0.1;
const REGEX_LENGTH: f64 = 0.25;
const UNKNOWN: u64 = u64::MAX;

/// CEL's view of a schema node (the apiserver's `DeclType`): its type, the most elements it can
/// hold (list items, map entries, string bytes) and the fewest bytes it takes in JSON.
#[derive(Debug, Clone)]
struct Decl {
    kind: Kind,
    max_elements: u64,
    min_size: u64,
}

#[derive(Debug, Clone)]
enum Kind {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Timestamp,
    Duration,
    Null,
    Dyn,
    List(Rc<Decl>),
    Map(Rc<Decl>),
    Object(BTreeMap<String, Rc<Decl>>),
}

impl Decl {
    fn of(kind: Kind) -> Rc<Decl> {
        Rc::new(Decl {
            kind,
            max_elements: 0,
            min_size: 0,
        })
    }

    fn dyn_() -> Rc<Decl> {
        Decl::of(Kind::Dyn)
    }

    fn is_scalar(&self) -> bool {
        matches!(
            self.kind,
            Kind::Bool | Kind::Int | Kind::Uint | Kind::Double | Kind::Timestamp | Kind::Duration
        )
    }

    fn elem(&self) -> Option<&Rc<Decl>> {
        match &self.kind {
            Kind::List(e) | Kind::Map(e) => Some(e),
            _ => None,
        }
    }
}

fn zero_if_negative(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_i64).map(|n| n.max(0) as u64)
}

/// The longest string a request can carry for this string schema (`estimateMaxStringLengthPerRequest`).
fn max_string_length(s: &Value) -> u64 {
    match s.get("format").and_then(Value::as_str) {
        _ if s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) => {
            MAX_REQUEST_SIZE_BYTES - 2
        }
        Some("duration") | Some("date-time") => 32,
        Some("date") => 12,
        _ => MAX_REQUEST_SIZE_BYTES - 2,
    }
}

/// `SchemaDeclType`: `None` for nodes CEL cannot see (no type).
fn schema_decl(s: &Value, resource_root: bool) -> Option<Rc<Decl>> {
    let max_length = zero_if_negative(s.get("maxLength"));
    if s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return Some(Rc::new(Decl {
            kind: Kind::Dyn,
            max_elements: max_length.map_or(MAX_REQUEST_SIZE_BYTES - 2, |m| m.saturating_mul(4)),
            min_size: 1,
        }));
    }
    let ty = s.get("type").and_then(Value::as_str)?;
    let decl = match ty {
        "array" => {
            let items = schema_decl(s.get("items")?, false)?;
            let max = zero_if_negative(s.get("maxItems"))
                .unwrap_or((MAX_REQUEST_SIZE_BYTES - 2) / (items.min_size + 1));
            Decl {
                kind: Kind::List(items),
                max_elements: max,
                min_size: 2,
            }
        }
        "object" => {
            if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
                let values = schema_decl(ap, false)?;
                let max = zero_if_negative(s.get("maxProperties"))
                    .unwrap_or((MAX_REQUEST_SIZE_BYTES - 2) / (values.min_size + 6));
                Decl {
                    kind: Kind::Map(values),
                    max_elements: max,
                    min_size: 2,
                }
            } else {
                let required: Vec<&str> = s
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let mut fields = BTreeMap::new();
                let mut min_size = 2;
                for (name, prop) in s
                    .get("properties")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    if let Some(d) = schema_decl(prop, false) {
                        if required.contains(&name.as_str()) && prop.get("default").is_none() {
                            min_size += name.len() as u64 + d.min_size + 4;
                        }
                        fields.insert(name.clone(), d);
                    }
                }
                if resource_root {
                    // apiVersion, kind, metadata.name and metadata.generateName are always there.
                    let string = || {
                        Rc::new(Decl {
                            kind: Kind::String,
                            max_elements: MAX_REQUEST_SIZE_BYTES - 2,
                            min_size: 2,
                        })
                    };
                    fields.entry("apiVersion".into()).or_insert_with(string);
                    fields.entry("kind".into()).or_insert_with(string);
                    let meta = BTreeMap::from([
                        ("name".to_string(), string()),
                        ("generateName".to_string(), string()),
                    ]);
                    fields.insert(
                        "metadata".into(),
                        Rc::new(Decl {
                            kind: Kind::Object(meta),
                            max_elements: 0,
                            min_size: 2,
                        }),
                    );
                }
                Decl {
                    kind: Kind::Object(fields),
                    max_elements: 0,
                    min_size,
                }
            }
        }
        "string" => match s.get("format").and_then(Value::as_str) {
            Some("byte") => Decl {
                kind: Kind::Bytes,
                max_elements: max_length.unwrap_or_else(|| max_string_length(s)),
                min_size: 2,
            },
            Some("duration") => Decl {
                kind: Kind::Duration,
                max_elements: max_string_length(s),
                min_size: 3,
            },
            Some("date") => Decl {
                kind: Kind::Timestamp,
                max_elements: max_string_length(s),
                min_size: 12,
            },
            Some("date-time") => Decl {
                kind: Kind::Timestamp,
                max_elements: max_string_length(s),
                min_size: 21,
            },
            _ => {
                let longest_enum = s.get("enum").and_then(Value::as_array).map(|e| {
                    e.iter()
                        .filter_map(Value::as_str)
                        .map(|v| v.len() as u64)
                        .max()
                        .unwrap_or(0)
                });
                Decl {
                    kind: Kind::String,
                    max_elements: max_length
                        .map(|m| m.saturating_mul(4))
                        .or(longest_enum)
                        .unwrap_or_else(|| max_string_length(s)),
                    min_size: 2,
                }
            }
        },
        "boolean" => Decl {
            kind: Kind::Bool,
            max_elements: 0,
            min_size: 4,
        },
        "number" => Decl {
            kind: Kind::Double,
            max_elements: 0,
            min_size: 1,
        },
        "integer" => Decl {
            kind: Kind::Int,
            max_elements: 0,
            min_size: 1,
        },
        _ => return None,
    };
    Some(Rc::new(decl))
}

/// `ceil(n * factor)`, saturating.
fn by_factor(n: u64, factor: f64) -> u64 {
    let v = (n as f64 * factor).ceil();
    if v >= u64::MAX as f64 {
        u64::MAX
    } else {
        v as u64
    }
}

#[derive(Clone)]
struct Local {
    path: Option<Vec<String>>,
    size: Option<u64>,
    entry: Option<u64>,
    ty: Rc<Decl>,
}

/// One rule's estimate: cel-go's `coster` over the parsed expression, max side only.
struct Coster<'a> {
    root: &'a Rc<Decl>,
    sizes: HashMap<u64, u64>,
    /// The size of one element of a list or map built by the expression (cel-go's entry sizes).
    entries: HashMap<u64, u64>,
    paths: HashMap<u64, Vec<String>>,
    types: HashMap<u64, Rc<Decl>>,
    locals: HashMap<String, Vec<Local>>,
}

impl<'a> Coster<'a> {
    fn new(root: &'a Rc<Decl>) -> Coster<'a> {
        Coster {
            root,
            sizes: HashMap::new(),
            entries: HashMap::new(),
            paths: HashMap::new(),
            types: HashMap::new(),
            locals: HashMap::new(),
        }
    }

    fn local(&self, name: &str) -> Option<&Local> {
        self.locals.get(name).and_then(|s| s.last())
    }

    fn ty(&self, e: &IdedExpr) -> Rc<Decl> {
        if let Expr::Ident(name) = &e.expr
            && let Some(l) = self.local(name)
        {
            return l.ty.clone();
        }
        self.types.get(&e.id).cloned().unwrap_or_else(Decl::dyn_)
    }

    fn path(&self, e: &IdedExpr) -> Option<Vec<String>> {
        if let Expr::Ident(name) = &e.expr
            && let Some(l) = self.local(name)
        {
            return l.path.clone();
        }
        self.paths.get(&e.id).cloned()
    }

    /// The apiextensions size estimator: walk the path from the rule's `self` (its first element
    /// is skipped whatever it names, which is where the computed-list quirk comes from).
    fn size_from_path(&self, path: &[String]) -> Option<u64> {
        if path.is_empty() {
            return None;
        }
        let mut node = self.root;
        for seg in &path[1..] {
            node = match (seg.as_str(), &node.kind) {
                ("@items" | "@values", Kind::List(e) | Kind::Map(e)) => e,
                ("@keys", Kind::Map(_)) => return None,
                (name, Kind::Object(fields)) => fields.get(name)?,
                _ => return None,
            };
        }
        Some(node.max_elements)
    }

    /// cel-go's `computeSize`; `None` is an unknown size.
    fn size(&self, e: &IdedExpr) -> Option<u64> {
        if let Some(s) = self.sizes.get(&e.id) {
            return Some(*s);
        }
        match &e.expr {
            Expr::Literal(LiteralValue::String(s)) => return Some(s.inner().chars().count() as u64),
            Expr::Literal(LiteralValue::Bytes(b)) => return Some(b.inner().len() as u64),
            Expr::Literal(_) => return Some(1),
            Expr::List(l) => return Some(l.elements.len() as u64),
            Expr::Map(m) => return Some(m.entries.len() as u64),
            _ => {}
        }
        if let Some(s) = self.path(e).and_then(|p| self.size_from_path(&p)) {
            return Some(s);
        }
        if self.ty(e).is_scalar() {
            return Some(1);
        }
        if let Expr::Ident(name) = &e.expr {
            return self.local(name).and_then(|l| l.size);
        }
        None
    }

    fn size_or_unknown(&self, e: &IdedExpr) -> u64 {
        self.size(e).unwrap_or(UNKNOWN)
    }

    fn entry(&self, e: &IdedExpr) -> Option<u64> {
        if let Some(s) = self.entries.get(&e.id) {
            return Some(*s);
        }
        if let Expr::Ident(name) = &e.expr {
            return self.local(name).and_then(|l| l.entry);
        }
        None
    }

    fn push_local(&mut self, name: &str, local: Local) {
        self.locals.entry(name.to_owned()).or_default().push(local);
    }

    fn pop_local(&mut self, name: &str) {
        if let Some(s) = self.locals.get_mut(name) {
            s.pop();
        }
    }

    fn cost(&mut self, e: &IdedExpr) -> u64 {
        match &e.expr {
            Expr::Literal(l) => {
                let kind = match l {
                    LiteralValue::Boolean(_) => Kind::Bool,
                    LiteralValue::Bytes(_) => Kind::Bytes,
                    LiteralValue::Double(_) => Kind::Double,
                    LiteralValue::Int(_) => Kind::Int,
                    LiteralValue::Null => Kind::Null,
                    LiteralValue::String(_) => Kind::String,
                    LiteralValue::UInt(_) => Kind::Uint,
                };
                self.types.insert(e.id, Decl::of(kind));
                0
            }
            Expr::Ident(name) => {
                if self.local(name).is_none() {
                    self.paths.insert(e.id, vec![name.clone()]);
                    let ty = if name == "self" || name == "oldSelf" {
                        self.root.clone()
                    } else {
                        Decl::dyn_()
                    };
                    self.types.insert(e.id, ty);
                }
                1
            }
            Expr::Select(sel) => {
                let operand = self.cost(&sel.operand);
                if sel.test {
                    // Kubernetes sets PresenceTestHasCost(false): has() costs its operand only.
                    self.types.insert(e.id, Decl::of(Kind::Bool));
                    return operand;
                }
                let op_ty = self.ty(&sel.operand);
                let (extra, field_ty) = match &op_ty.kind {
                    Kind::Object(fields) => (
                        1,
                        fields.get(&sel.field).cloned().unwrap_or_else(Decl::dyn_),
                    ),
                    Kind::Map(v) => (1, v.clone()),
                    _ => (0, Decl::dyn_()),
                };
                self.types.insert(e.id, field_ty);
                let mut path = self.path(&sel.operand).unwrap_or_default();
                path.push(sel.field.clone());
                self.paths.insert(e.id, path);
                operand.saturating_add(extra)
            }
            Expr::Call(call) => self.cost_call(e, call),
            Expr::List(list) => {
                let mut sum: u64 = 10;
                let mut item = 0;
                let mut elem_ty = Decl::dyn_();
                for el in &list.elements {
                    sum = sum.saturating_add(self.cost(el));
                    item = item.max(self.size_or_unknown(el));
                    elem_ty = self.ty(el);
                }
                self.entries.insert(e.id, item);
                self.types.insert(e.id, Decl::of(Kind::List(elem_ty)));
                sum
            }
            Expr::Map(map) => {
                let mut sum: u64 = 30;
                let mut val = 0;
                let mut val_ty = Decl::dyn_();
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(m) = &entry.expr {
                        sum = sum
                            .saturating_add(self.cost(&m.key))
                            .saturating_add(self.cost(&m.value));
                        val = val.max(self.size_or_unknown(&m.value));
                        val_ty = self.ty(&m.value);
                    }
                }
                self.entries.insert(e.id, val);
                self.types.insert(e.id, Decl::of(Kind::Map(val_ty)));
                sum
            }
            Expr::Struct(s) => {
                let mut sum: u64 = 40;
                for entry in &s.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        sum = sum.saturating_add(self.cost(&f.value));
                    }
                }
                sum
            }
            Expr::Comprehension(c) => self.cost_comprehension(e, c),
            _ => 0,
        }
    }

    fn cost_comprehension(&mut self, e: &IdedExpr, c: &ComprehensionExpr) -> u64 {
        let mut sum = self.cost(&c.iter_range);
        sum = sum.saturating_add(self.cost(&c.accu_init));
        let bind = matches!(&c.iter_range.expr, Expr::List(l) if l.elements.is_empty())
            && matches!(&c.loop_cond.expr, Expr::Literal(LiteralValue::Boolean(b)) if !**b)
            && c.accu_var != "@result";
        let accu = Local {
            path: self.path(&c.accu_init),
            size: self.size(&c.accu_init),
            entry: self.entry(&c.accu_init),
            ty: self.ty(&c.accu_init),
        };
        self.push_local(&c.accu_var, accu);
        if bind {
            // cel.bind: the value is computed lazily, once.
            sum = sum.saturating_add(self.cost(&c.result));
            self.pop_local(&c.accu_var);
            if let Some(s) = self.size(&c.result) {
                self.sizes.insert(e.id, s);
            }
            let ty = self.ty(&c.result);
            self.types.insert(e.id, ty);
            return sum;
        }
        let range_ty = self.ty(&c.iter_range);
        let range_path = self.path(&c.iter_range).unwrap_or_default();
        let range_entry = self.entry(&c.iter_range);
        let is_list =
            matches!(range_ty.kind, Kind::List(_)) || matches!(c.iter_range.expr, Expr::List(_));
        let elem_ty = range_ty.elem().cloned().unwrap_or_else(Decl::dyn_);
        let mut vars = Vec::new();
        match &c.iter_var2 {
            Some(second) => {
                let (k, v) = if is_list {
                    ("@indices", "@items")
                } else {
                    ("@keys", "@values")
                };
                let key_ty = Decl::of(if is_list { Kind::Int } else { Kind::String });
                vars.push((c.iter_var.clone(), k, None, key_ty));
                vars.push((second.clone(), v, range_entry, elem_ty));
            }
            None if is_list => vars.push((c.iter_var.clone(), "@items", range_entry, elem_ty)),
            None => vars.push((c.iter_var.clone(), "@keys", None, Decl::of(Kind::String))),
        }
        for (name, seg, size, ty) in &vars {
            let mut path = range_path.clone();
            path.push((*seg).to_owned());
            self.push_local(
                name,
                Local {
                    path: Some(path),
                    size: *size,
                    entry: None,
                    ty: ty.clone(),
                },
            );
        }
        let loop_cost = self.cost(&c.loop_cond);
        let step_cost = self.cost(&c.loop_step);
        for (name, ..) in &vars {
            self.pop_local(name);
        }
        sum = sum.saturating_add(self.cost(&c.result));
        let result_ty = match &c.accu_init.expr {
            Expr::List(_) | Expr::Map(_) => self.ty(&c.loop_step),
            _ => self.ty(&c.result),
        };
        self.pop_local(&c.accu_var);
        let range = self.size_or_unknown(&c.iter_range);
        sum = sum.saturating_add(range.saturating_mul(step_cost.saturating_add(loop_cost)));
        match &c.accu_init.expr {
            Expr::Literal(_) => {
                if let Some(s) = self.size(&c.accu_init) {
                    self.sizes.insert(e.id, s);
                }
            }
            Expr::List(_) | Expr::Map(_) => {
                self.sizes.insert(e.id, range);
                if let Some(s) = self.entry(&c.loop_step) {
                    self.entries.insert(e.id, s);
                }
            }
            _ => {}
        }
        self.types.insert(e.id, result_ty);
        sum
    }

    fn cost_call(&mut self, e: &IdedExpr, call: &kube_cel::cel::common::ast::CallExpr) -> u64 {
        let f = call.func_name.as_str();
        if f == "dyn" && call.args.len() == 1 && call.target.is_none() {
            let c = self.cost(&call.args[0]);
            if let Some(s) = self.size(&call.args[0]) {
                self.sizes.insert(e.id, s);
            }
            if let Some(s) = self.entry(&call.args[0]) {
                self.entries.insert(e.id, s);
            }
            self.types.insert(e.id, Decl::dyn_());
            return c.saturating_add(1);
        }
        let arg_costs: Vec<u64> = call.args.iter().map(|a| self.cost(a)).collect();
        let args_sum = arg_costs.iter().fold(0u64, |a, b| a.saturating_add(*b));
        let target_cost = call.target.as_deref().map_or(0, |t| self.cost(t));
        let target = call.target.as_deref();
        let arg = |i: usize| call.args.get(i);
        let size_of =
            |me: &Self, x: Option<&IdedExpr>| x.map_or(UNKNOWN, |x| me.size_or_unknown(x));
        let kind_of = |me: &Self, x: Option<&IdedExpr>| x.map(|x| me.ty(x));
        let string = || Decl::of(Kind::String);
        let boolean = || Decl::of(Kind::Bool);
        let int = || Decl::of(Kind::Int);

        // (cost of the call itself, size of its result, its type)
        let (fn_cost, result_size, ty): (u64, Option<u64>, Rc<Decl>) = match f {
            operators::LOGICAL_AND | operators::LOGICAL_OR => (0, None, boolean()),
            operators::CONDITIONAL if call.args.len() == 3 => {
                let t = self.size(&call.args[1]);
                let fl = self.size(&call.args[2]);
                let size = match (t, fl) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
                let ty = {
                    let t = self.ty(&call.args[1]);
                    if matches!(t.kind, Kind::Dyn) {
                        self.ty(&call.args[2])
                    } else {
                        t
                    }
                };
                let cost = arg_costs[0].saturating_add(arg_costs[1].max(arg_costs[2]));
                let entry = match (self.entry(&call.args[1]), self.entry(&call.args[2])) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
                if let Some(en) = entry {
                    self.entries.insert(e.id, en);
                }
                // Already the whole cost: the arguments are not added again.
                return self.finish(e, target_cost.saturating_add(cost), size, ty);
            }
            operators::EQUALS | operators::NOT_EQUALS => {
                let smallest = size_of(self, arg(0)).min(size_of(self, arg(1)));
                (by_factor(smallest, STRING_TRAVERSAL), None, boolean())
            }
            operators::LESS
            | operators::LESS_EQUALS
            | operators::GREATER
            | operators::GREATER_EQUALS => {
                let strings = matches!(
                    kind_of(self, arg(0)).map(|t| t.kind.clone()),
                    Some(Kind::String | Kind::Bytes)
                );
                if strings {
                    let smallest = size_of(self, arg(0)).min(size_of(self, arg(1)));
                    (by_factor(smallest, STRING_TRAVERSAL), None, boolean())
                } else {
                    (1, None, boolean())
                }
            }
            operators::ADD if call.args.len() == 2 => {
                let lt = self.ty(&call.args[0]);
                let rt = self.ty(&call.args[1]);
                let total = size_of(self, arg(0)).saturating_add(size_of(self, arg(1)));
                match (&lt.kind, &rt.kind) {
                    (Kind::String | Kind::Bytes, _) | (_, Kind::String | Kind::Bytes) => {
                        (by_factor(total, STRING_TRAVERSAL), Some(total), lt)
                    }
                    (Kind::List(a), Kind::List(b)) => {
                        let elem = if matches!(a.kind, Kind::Dyn) {
                            b.clone()
                        } else {
                            a.clone()
                        };
                        if let (Some(x), Some(y)) =
                            (self.entry(&call.args[0]), self.entry(&call.args[1]))
                        {
                            self.entries.insert(e.id, x.max(y));
                        }
                        (1, Some(total), Decl::of(Kind::List(elem)))
                    }
                    _ => (1, None, lt),
                }
            }
            operators::IN if call.args.len() == 2 => {
                let list = self.ty(&call.args[1]);
                if matches!(list.kind, Kind::List(_)) || matches!(call.args[1].expr, Expr::List(_))
                {
                    (size_of(self, arg(1)), None, boolean())
                } else {
                    (1, None, boolean())
                }
            }
            operators::INDEX if call.args.len() == 2 => {
                let coll = self.ty(&call.args[0]);
                let seg = match coll.kind {
                    Kind::List(_) => Some("@items"),
                    Kind::Map(_) => Some("@values"),
                    _ if matches!(call.args[0].expr, Expr::List(_)) => Some("@items"),
                    _ => None,
                };
                let elem = coll.elem().cloned().unwrap_or_else(Decl::dyn_);
                let mut size = self.entry(&call.args[0]);
                if let Some(seg) = seg {
                    let mut path = self.path(&call.args[0]).unwrap_or_default();
                    path.push(seg.to_owned());
                    if size.is_none() {
                        size = self.size_from_path(&path);
                    }
                    self.paths.insert(e.id, path);
                }
                (1, size, elem)
            }
            "startsWith" | "endsWith" if target.is_some() && call.args.len() == 1 => (
                by_factor(size_of(self, arg(0)), STRING_TRAVERSAL),
                None,
                boolean(),
            ),
            "contains" if target.is_some() && call.args.len() == 1 => {
                let s = by_factor(size_of(self, target), STRING_TRAVERSAL);
                let sub = by_factor(size_of(self, arg(0)), STRING_TRAVERSAL);
                (s.saturating_mul(sub), None, boolean())
            }
            "matches" if target.is_some() && call.args.len() == 1 => {
                let s = by_factor(size_of(self, target).saturating_add(1), STRING_TRAVERSAL);
                let re = by_factor(size_of(self, arg(0)), REGEX_LENGTH);
                (s.saturating_mul(re), None, boolean())
            }
            "find" | "findAll" if target.is_some() && !call.args.is_empty() => {
                let sz = size_of(self, target);
                let s = by_factor(sz.saturating_add(1), STRING_TRAVERSAL);
                let re = by_factor(size_of(self, arg(0)), REGEX_LENGTH);
                let ty = if f == "find" {
                    string()
                } else {
                    Decl::of(Kind::List(string()))
                };
                (s.saturating_mul(re), Some(sz), ty)
            }
            "lowerAscii" | "upperAscii" | "substring" | "trim" if target.is_some() => {
                let sz = size_of(self, target);
                (by_factor(sz, STRING_TRAVERSAL), Some(sz), string())
            }
            "replace" if target.is_some() && call.args.len() >= 2 => {
                let sz = size_of(self, target);
                let from_min = match &call.args[0].expr {
                    Expr::Literal(LiteralValue::String(s)) => s.inner().chars().count() as u64,
                    _ => 0,
                };
                let to = size_of(self, arg(1));
                let size = if from_min == 0 {
                    sz.saturating_add(1).saturating_mul(to).saturating_add(sz)
                } else if to <= from_min {
                    sz
                } else {
                    sz.div_ceil(from_min).saturating_mul(to)
                };
                (by_factor(sz, 2.0 * STRING_TRAVERSAL), Some(size), string())
            }
            "split" if target.is_some() => {
                let sz = size_of(self, target);
                let max = match call.args.get(1).map(|a| &a.expr) {
                    Some(Expr::Literal(LiteralValue::Int(i))) => (*i.inner()).max(0) as u64,
                    _ => sz,
                };
                (
                    by_factor(sz, 2.0 * STRING_TRAVERSAL),
                    Some(max),
                    Decl::of(Kind::List(string())),
                )
            }
            "join" if target.is_some() => {
                let t = target.map(|t| self.ty(t));
                let n = size_of(self, target);
                let mut sz = match t.as_ref().and_then(|t| t.elem()) {
                    Some(_) => {
                        let mut path = target.and_then(|t| self.path(t)).unwrap_or_default();
                        path.push("@items".into());
                        n.saturating_mul(self.size_from_path(&path).unwrap_or(UNKNOWN))
                    }
                    None => 0,
                };
                if let Some(sep) = arg(0) {
                    sz = sz.saturating_add(
                        size_of(self, Some(sep)).saturating_mul(n.saturating_sub(1)),
                    );
                }
                (by_factor(sz, STRING_TRAVERSAL), Some(sz), string())
            }
            "isSorted" | "sum" | "max" | "min" | "indexOf" | "lastIndexOf" | "includes"
                if target.is_some() =>
            {
                let t = target.map(|t| self.ty(t));
                let n = size_of(self, target);
                match t.as_ref().and_then(|t| t.elem()) {
                    Some(el) => {
                        let mut per = 1u64;
                        if matches!(el.kind, Kind::String | Kind::Bytes) {
                            let mut path = target.and_then(|t| self.path(t)).unwrap_or_default();
                            path.push("@items".into());
                            let es = self.size_from_path(&path).unwrap_or(UNKNOWN);
                            per = per.saturating_add(by_factor(es, STRING_TRAVERSAL));
                        }
                        let ty = match f {
                            "isSorted" | "includes" => boolean(),
                            "indexOf" | "lastIndexOf" => int(),
                            _ => el.clone(),
                        };
                        (n.saturating_mul(per), None, ty)
                    }
                    None => (by_factor(n, STRING_TRAVERSAL), None, int()),
                }
            }
            "url" | "jsonpatch.escapeKey" if !call.args.is_empty() => {
                let sz = size_of(self, arg(0));
                (by_factor(sz, STRING_TRAVERSAL), Some(sz), Decl::dyn_())
            }
            "isIP" | "isCIDR" | "isQuantity" | "isSemver" if !call.args.is_empty() => (
                by_factor(size_of(self, arg(0)), STRING_TRAVERSAL),
                None,
                boolean(),
            ),
            "cidr" | "quantity" | "semver" if !call.args.is_empty() => (
                by_factor(size_of(self, arg(0)), STRING_TRAVERSAL),
                None,
                Decl::dyn_(),
            ),
            "ip" if target.is_some() => (1, None, Decl::dyn_()),
            "ip" if !call.args.is_empty() => (
                by_factor(size_of(self, arg(0)), STRING_TRAVERSAL),
                None,
                Decl::dyn_(),
            ),
            "ip.isCanonical" if !call.args.is_empty() => (
                by_factor(size_of(self, arg(0)), 2.0 * STRING_TRAVERSAL),
                None,
                boolean(),
            ),
            "containsIP" | "containsCIDR" if !call.args.is_empty() => {
                // Two byte lists of at most 16 bytes compared; a string argument parsed too.
                let mut c = by_factor(32, STRING_TRAVERSAL);
                if f == "containsCIDR" {
                    c = c
                        .saturating_add(by_factor(16, STRING_TRAVERSAL))
                        .saturating_add(1);
                }
                if matches!(self.ty(&call.args[0]).kind, Kind::String) {
                    c = c.saturating_add(by_factor(size_of(self, arg(0)), STRING_TRAVERSAL));
                }
                (c, None, boolean())
            }
            // Typed int in Kubernetes' IP/CIDR library: as a scalar its size is 1, so
            // `ip(a).family() == ip(b).family()` costs 1, not a comparison of unknown length.
            "family" | "prefixLength" if target.is_some() => (1, None, int()),
            "size" => (1, None, int()),
            "int" => (1, None, int()),
            "uint" => (1, None, Decl::of(Kind::Uint)),
            "double" => (1, None, Decl::of(Kind::Double)),
            "bool" => (1, None, boolean()),
            "string" => (1, None, string()),
            "bytes" => (1, None, Decl::of(Kind::Bytes)),
            "timestamp" => (1, None, Decl::of(Kind::Timestamp)),
            "duration" => (1, None, Decl::of(Kind::Duration)),
            operators::LOGICAL_NOT
            | operators::NOT_STRICTLY_FALSE
            | "isUnspecified"
            | "isLoopback"
            | "isLinkLocalMulticast"
            | "isLinkLocalUnicast"
            | "isGlobalUnicast"
            | "isInteger"
            | "isGreaterThan"
            | "isLessThan" => (1, None, boolean()),
            "charAt" | "format" | "quote" => (1, None, string()),
            _ => {
                let ty = match f {
                    operators::SUBSTRACT
                    | operators::MULTIPLY
                    | operators::DIVIDE
                    | operators::MODULO
                    | operators::NEGATE => {
                        call.args.first().map_or_else(Decl::dyn_, |a| self.ty(a))
                    }
                    _ => Decl::dyn_(),
                };
                (1, None, ty)
            }
        };
        let total = target_cost.saturating_add(fn_cost).saturating_add(args_sum);
        self.finish(e, total, result_size, ty)
    }

    fn finish(&mut self, e: &IdedExpr, cost: u64, size: Option<u64>, ty: Rc<Decl>) -> u64 {
        if let Some(s) = size {
            self.sizes.insert(e.id, s);
        }
        self.types.insert(e.id, ty);
        cost
    }
}

/// The estimated cost of one rule evaluated once against a node of type `decl`; `None` when it
/// does not parse (reported elsewhere).
fn rule_cost(rule: &str, decl: &Rc<Decl>) -> Option<u64> {
    let expr = kube_cel::cel::parser::Parser::default().parse(rule).ok()?;
    Some(Coster::new(decl).cost(&expr))
}

/// How kube-apiserver words a cost over its limit (`getCostErrorMessage`).
fn over_budget(what: &str, cost: u64, limit: u64) -> String {
    let factor = cost as f64 / limit as f64;
    let factor = if factor > 100.0 {
        "more than 100x".to_string()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!(
        "{what} exceeds budget by factor of {factor} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

/// How many times the node with this decl can occur when an ancestor is unbounded.
fn max_cardinality(min_size: u64) -> u64 {
    MAX_REQUEST_SIZE_BYTES / (min_size + 1)
}

#[derive(Default)]
struct Budget {
    errors: Vec<String>,
    total: u64,
    most_expensive: Vec<(String, u64)>,
}

impl Budget {
    fn observe(&mut self, path: String, cost: u64) {
        self.total = self.total.saturating_add(cost);
        if cost < SCHEMA_COST_LIMIT / 100 {
            return;
        }
        self.most_expensive.push((path, cost));
        self.most_expensive.sort_by_key(|r| std::cmp::Reverse(r.1));
        self.most_expensive.truncate(4);
    }
}

fn walk(s: &Value, decl: Option<&Rc<Decl>>, path: &str, cardinality: Option<u64>, b: &mut Budget) {
    if let (Some(decl), Some(rules)) = (
        decl,
        s.get("x-kubernetes-validations").and_then(Value::as_array),
    ) {
        for (i, rule) in rules.iter().enumerate() {
            let rule_path = format!("{path}.x-kubernetes-validations[{i}]");
            if let Some(cost) = rule
                .get("rule")
                .and_then(Value::as_str)
                .and_then(|r| rule_cost(r, decl))
            {
                let times = cardinality.unwrap_or_else(|| max_cardinality(decl.min_size));
                let cost = if cost == 0 {
                    0
                } else {
                    cost.saturating_mul(times)
                };
                if cost > RULE_COST_LIMIT {
                    b.errors.push(format!(
                        "{rule_path}.rule: Forbidden: {}",
                        over_budget("estimated rule cost", cost, RULE_COST_LIMIT)
                    ));
                }
                b.observe(format!("{rule_path}.rule"), cost);
            }
            if let Some(cost) = rule
                .get("messageExpression")
                .and_then(Value::as_str)
                .and_then(|m| rule_cost(m, decl))
            {
                if cost > RULE_COST_LIMIT {
                    b.errors.push(format!(
                        "{rule_path}.messageExpression: Forbidden: {}",
                        over_budget("estimated messageExpression cost", cost, RULE_COST_LIMIT)
                    ));
                }
                b.observe(format!("{rule_path}.messageExpression"), cost);
            }
        }
    }
    // How many more times each child can occur per occurrence of this node.
    let fan_out = match s.get("type").and_then(Value::as_str) {
        Some("array") => zero_if_negative(s.get("maxItems")),
        Some("object") if s.get("additionalProperties").is_some_and(Value::is_object) => {
            zero_if_negative(s.get("maxProperties"))
        }
        _ => Some(1),
    };
    let child_cardinality = cardinality.zip(fan_out).map(|(c, f)| c.saturating_mul(f));
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        let mut names: Vec<&String> = props.keys().collect();
        names.sort();
        for name in names {
            let child = match decl.map(|d| &d.kind) {
                Some(Kind::Object(fields)) => fields.get(name.as_str()),
                _ => None,
            };
            walk(
                &props[name],
                child,
                &format!("{path}.properties[{name}]"),
                child_cardinality,
                b,
            );
        }
    }
    if let Some(items) = s.get("items").filter(|i| i.is_object()) {
        walk(
            items,
            decl.and_then(|d| d.elem()),
            &format!("{path}.items"),
            child_cardinality,
            b,
        );
    }
    if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
        walk(
            ap,
            decl.and_then(|d| d.elem()),
            &format!("{path}.additionalProperties"),
            child_cardinality,
            b,
        );
    }
}

/// Every cost error kube-apiserver would report for a CRD version's `openAPIV3Schema`, in its
/// words, each prefixed with the path from `openAPIV3Schema`; empty when within budget.
pub fn cost_errors(openapi_v3_schema: &Value) -> Vec<String> {
    let mut b = Budget::default();
    let root = schema_decl(openapi_v3_schema, true);
    walk(
        openapi_v3_schema,
        root.as_ref(),
        "openAPIV3Schema",
        Some(1),
        &mut b,
    );
    if b.total > SCHEMA_COST_LIMIT {
        for (path, _) in &b.most_expensive {
            b.errors.push(format!(
                "{path}: Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"
            ));
        }
        b.errors.push(format!(
            "openAPIV3Schema: Forbidden: {}",
            over_budget(
                "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
                b.total,
                SCHEMA_COST_LIMIT
            )
        ));
    }
    b.errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec_schema(spec: Value) -> Value {
        json!({"type": "object", "properties": {"spec": spec}})
    }

    fn with_n(template: &Value, n: u64) -> Value {
        let text = template.to_string().replace("\"MAXN\"", &n.to_string());
        spec_schema(serde_json::from_str(&text).unwrap())
    }

    /// The largest `MAXN` kube-apiserver 1.32.13 accepted for each schema (found by bisection
    /// with `kubectl apply --dry-run=server` against the kit's kube-apiserver); the estimate must
    /// accept exactly that and refuse one more.
    fn limits_measured_on_kube_apiserver() -> Vec<(&'static str, Value, Option<u64>)> {
        let strings = |max_len: u64, rule: &str| {
            json!({"type": "object", "properties": {"l": {"type": "array", "maxItems": "MAXN",
                "items": {"type": "string", "maxLength": max_len},
                "x-kubernetes-validations": [{"rule": rule}]}}})
        };
        let objects = |required: bool, rule: &str| {
            json!({"type": "object", "properties": {"l": {"type": "array", "maxItems": "MAXN",
                "items": {"type": "object", "required": if required { json!(["name"]) } else { json!([]) },
                    "properties": {"name": {"type": "string", "maxLength": 63}, "port": {"type": "integer"}}},
                "x-kubernetes-validations": [{"rule": rule}]}}})
        };
        let mut pairs = serde_json::Map::new();
        for p in ["l", "m", "n", "o", "p", "q"] {
            pairs.insert(p.into(), json!({"type": "array", "maxItems": "MAXN",
                "items": {"type": "string", "maxLength": 100},
                "x-kubernetes-validations": [{"rule": "self.all(a, isCIDR(a))"}, {"rule": "self.all(a, isIP(a))"}]}));
        }
        vec![
            (
                "all true",
                strings(100, "self.all(a, true)"),
                Some(3_333_332),
            ),
            (
                "isCIDR",
                strings(100, "self.all(a, isCIDR(a))"),
                Some(227_272),
            ),
            (
                "split size",
                strings(100, "self.all(a, a.split('-').size() == 2)"),
                Some(116_279),
            ),
            (
                "split index",
                strings(100, "self.all(a, isIP(a.split('-')[0]))"),
                Some(9_580),
            ),
            (
                "contains",
                strings(100, "self.all(a, a.contains('/'))"),
                Some(227_272),
            ),
            (
                "size compare",
                strings(100, "self.all(a, a.size() <= 15)"),
                Some(1_666_666),
            ),
            (
                "L2Advertisement interfaces",
                strings(
                    15,
                    "self.all(i, i.size() >= 1 && i.size() <= 15 && !i.contains('/') && !i.contains(' '))",
                ),
                Some(399_999),
            ),
            (
                "IPAddressPool addresses",
                strings(
                    100,
                    "self.all(a, isCIDR(a) || (a.split('-').size() == 2 && isIP(a.split('-')[0]) && isIP(a.split('-')[1])))",
                ),
                Some(6_380),
            ),
            (
                "maxLength varies",
                json!({"type": "object", "properties": {"l": {"type": "array", "maxItems": 10,
                    "items": {"type": "string", "maxLength": "MAXN"},
                    "x-kubernetes-validations": [{"rule": "self.all(a, a.contains('ab'))"}]}}}),
                Some(2_499_987),
            ),
            (
                "startsWith and has",
                objects(true, "self.all(p, p.name.startsWith('x') && has(p.port))"),
                Some(1_428_571),
            ),
            (
                "exists_one",
                objects(false, "self.exists_one(p, p.port == 80)"),
                Some(2_499_999),
            ),
            (
                "map and filter",
                objects(
                    false,
                    "self.map(p, p.name).size() > 0 && self.filter(p, p.port > 1).size() < 3",
                ),
                Some(333_332),
            ),
            (
                "rule on items",
                json!({"type": "object", "properties": {"l": {"type": "array", "maxItems": "MAXN",
                    "items": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 63}},
                        "x-kubernetes-validations": [{"rule": "self.name.matches('^[a-z]+$')"}]}}}}),
                Some(185_185),
            ),
            (
                "nested lists",
                json!({"type": "object", "properties": {"l": {"type": "array", "maxItems": "MAXN",
                    "items": {"type": "object", "properties": {"tags": {"type": "array", "maxItems": 8,
                        "items": {"type": "string", "maxLength": 20},
                        "x-kubernetes-validations": [{"rule": "self.all(t, t != 'x')"}]}}}}}}),
                Some(238_095),
            ),
            (
                "map",
                json!({"type": "object", "properties": {"m": {"type": "object", "maxProperties": "MAXN",
                    "additionalProperties": {"type": "string", "maxLength": 10},
                    "x-kubernetes-validations": [{"rule": "self.all(k, self[k].size() < 3) && 'a' in self"}]}}}),
                Some(1_249_999),
            ),
            (
                "concat and conditional",
                strings(
                    40,
                    "self.all(a, (a + 'x').size() > 0 && (a == 'y' ? isIP(a) : a.endsWith('z')))",
                ),
                Some(238_095),
            ),
            (
                "in a literal list",
                strings(10, "self.all(a, a in ['p', 'q'])"),
                Some(624_999),
            ),
            (
                "quadratic",
                strings(10, "self.all(a, self.exists_one(b, a == b))"),
                Some(1_117),
            ),
            (
                "lowerAscii",
                strings(30, "self.all(a, a.lowerAscii() == a)"),
                Some(344_827),
            ),
            (
                "unbounded list, item rule",
                json!({"type": "object", "properties": {"l": {"type": "array",
                    "items": {"type": "object", "properties": {"name": {"type": "string", "maxLength": "MAXN"}},
                        "x-kubernetes-validations": [{"rule": "self.name.contains('a')"}]}}}}),
                Some(17),
            ),
            (
                "unbounded list, item rule, required field",
                json!({"type": "object", "properties": {"l": {"type": "array",
                    "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "maxLength": "MAXN"}},
                        "x-kubernetes-validations": [{"rule": "self.name.contains('a')"}]}}}}),
                Some(97),
            ),
            (
                "unbounded strings",
                json!({"type": "object", "properties": {"l": {"type": "array", "maxItems": "MAXN",
                    "items": {"type": "string"}, "x-kubernetes-validations": [{"rule": "self.all(a, isCIDR(a))"}]}}}),
                Some(31),
            ),
            (
                "total over several rules",
                json!({"type": "object", "properties": pairs}),
                Some(189_393),
            ),
            (
                "size only, unbounded",
                json!({"type": "object", "properties": {"l": {"type": "array",
                    "items": {"type": "string", "maxLength": "MAXN"},
                    "x-kubernetes-validations": [{"rule": "self.all(a, a.size() < 10)"}]}}}),
                None,
            ),
        ]
    }

    #[test]
    fn limits_match_kube_apiserver() {
        for (name, template, max_ok) in limits_measured_on_kube_apiserver() {
            match max_ok {
                Some(n) => {
                    let at = cost_errors(&with_n(&template, n));
                    assert!(at.is_empty(), "{name}: refused at {n}: {at:?}");
                    let above = cost_errors(&with_n(&template, n + 1));
                    assert!(!above.is_empty(), "{name}: accepted at {}", n + 1);
                }
                None => {
                    let huge = cost_errors(&with_n(&template, 1_000_000_000));
                    assert!(huge.is_empty(), "{name}: refused: {huge:?}");
                }
            }
        }
    }

    #[test]
    fn lodestone_crds_are_within_budget() {
        for crd in lodestone_crds::all_crds() {
            let schema = serde_json::to_value(
                crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(
                cost_errors(&schema),
                Vec::<String>::new(),
                "{}",
                crd.spec.names.kind
            );
        }
    }

    /// The CRDs as they were before the bounds: what kube-apiserver 1.32.13 said of them.
    #[test]
    fn unbounded_pool_rules_are_refused_in_kube_apiserver_words() {
        let schema = spec_schema(json!({"type": "object", "properties": {"addresses": {
        "type": "array", "maxItems": 1024, "minItems": 1, "items": {"type": "string"},
        "x-kubernetes-validations": [
            {"rule": "self.all(a, a.size() <= 100)"},
            {"rule": "self.all(a, isCIDR(a) || (a.split('-').size() == 2 && isIP(a.split('-')[0]) && isIP(a.split('-')[1])))"}
        ]}}}));
        let spec = "openAPIV3Schema.properties[spec].properties[addresses].x-kubernetes-validations[1].rule";
        let hint = "(try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)";
        assert_eq!(
            cost_errors(&schema),
            vec![
                format!(
                    "{spec}: Forbidden: estimated rule cost exceeds budget by factor of more than 100x {hint}"
                ),
                format!(
                    "{spec}: Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"
                ),
                format!(
                    "openAPIV3Schema: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of 22.6x {hint}"
                ),
            ]
        );
    }

    /// kube-apiserver 1.32.13 accepts BGPPeer's rule comparing two addresses' families (tested
    /// by speaker/tests/bgp_api.rs against it): `family()` is an int, so `==` costs 1.
    #[test]
    fn ip_family_comparison_is_cheap() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "a": {"type": "string", "maxLength": 45}, "b": {"type": "string", "maxLength": 45}},
            "x-kubernetes-validations": [{"rule":
                "!has(self.a) || (isIP(self.a) && isIP(self.b) && ip(self.a).family() == ip(self.b).family())"}]}));
        assert_eq!(cost_errors(&schema), Vec::<String>::new());
    }

    #[test]
    fn factors_are_worded_like_go() {
        assert!(over_budget("x", 10_000_001, RULE_COST_LIMIT).contains("factor of 1.000000x"));
        assert!(over_budget("x", 22_600_000, RULE_COST_LIMIT).contains("factor of 2.3x"));
        assert!(over_budget("x", u64::MAX, RULE_COST_LIMIT).contains("factor of more than 100x"));
    }
}
