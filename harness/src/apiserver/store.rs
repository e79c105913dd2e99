//! The object store: every object as JSON, one resourceVersion counter for the whole store,
//! a bounded history of committed events and the live watchers. Writes are serialized by the
//! caller's lock, so resourceVersion order is commit order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Store key: (`group/plural`, namespace or `""`, name).
pub type ObjKey = (String, String, String);

/// Watch event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug, Clone)]
pub struct Event {
    /// The resourceVersion of this change.
    pub rv: u64,
    /// What happened.
    pub kind: EventType,
    /// `group/plural` of the object.
    pub resource: String,
    /// Namespace, `""` when cluster-scoped.
    pub namespace: String,
    /// The object after the change (for deletes: the last state, carrying the deletion's RV).
    pub object: Value,
    /// The object before the change (for selector transitions).
    pub previous: Option<Value>,
}

/// The requested resourceVersion is older than the retained history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// What the client asked for.
    pub requested: u64,
    /// The oldest resourceVersion a watch may still start from.
    pub oldest: u64,
}

/// Receives every commit after the subscription.
pub type Subscription = mpsc::UnboundedReceiver<Arc<Event>>;

/// The in-memory store.
#[derive(Debug)]
pub struct Store {
    objects: BTreeMap<ObjKey, Value>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    capacity: usize,
    /// A watch may start from any RV >= this: every later event is in `history`.
    oldest: u64,
    watchers: Vec<mpsc::UnboundedSender<Arc<Event>>>,
    /// A dry-run copy: writes do not advance resourceVersions (kube-apiserver's dry-run
    /// answers carry the existing resourceVersion, or none for a create).
    scratch: bool,
}

/// The RV of an object, 0 if absent or malformed.
pub fn rv_of(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), json!(rv.to_string()));
    }
}

impl Store {
    /// An empty store retaining `capacity` events of history.
    pub fn new(capacity: usize) -> Self {
        Store {
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            capacity: capacity.max(1),
            oldest: 1,
            watchers: Vec::new(),
            scratch: false,
        }
    }

    /// The current resourceVersion (of the latest commit).
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// One object.
    pub fn get(&self, key: &ObjKey) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects of one resource, optionally in one namespace, ordered by namespace then name.
    pub fn list<'a>(
        &'a self,
        resource: &'a str,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a Value)> + 'a {
        let start = (
            resource.to_string(),
            namespace.unwrap_or("").to_string(),
            String::new(),
        );
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.0 == resource && namespace.is_none_or(|ns| k.1 == ns))
    }

    fn commit(&mut self, kind: EventType, key: &ObjKey, object: Value, previous: Option<Value>) {
        let ev = Arc::new(Event {
            rv: self.rv,
            kind,
            resource: key.0.clone(),
            namespace: key.1.clone(),
            object,
            previous,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.capacity {
            if let Some(old) = self.history.pop_front() {
                self.oldest = old.rv;
            }
        }
        self.watchers.retain(|w| w.send(ev.clone()).is_ok());
    }

    /// Create or replace an object; stamps a fresh resourceVersion and returns the stored copy.
    pub fn put(&mut self, key: ObjKey, mut obj: Value) -> Value {
        if self.scratch {
            match self.objects.get(&key).map(rv_of) {
                Some(rv) => set_rv(&mut obj, rv),
                None => {
                    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("resourceVersion");
                    }
                }
            }
            self.objects.insert(key, obj.clone());
            return obj;
        }
        self.rv += 1;
        set_rv(&mut obj, self.rv);
        let previous = self.objects.insert(key.clone(), obj.clone());
        let kind = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.commit(kind, &key, obj.clone(), previous);
        obj
    }

    /// Remove an object; the returned (and broadcast) copy carries the deletion's resourceVersion.
    pub fn remove(&mut self, key: &ObjKey) -> Option<Value> {
        self.remove_as(key, None)
    }

    /// Remove an object, reporting `last` (e.g. the update that emptied its finalizers) as its
    /// final state instead of the stored one.
    pub fn remove_as(&mut self, key: &ObjKey, last: Option<Value>) -> Option<Value> {
        let previous = self.objects.remove(key)?;
        self.rv += 1;
        let mut obj = last.unwrap_or_else(|| previous.clone());
        set_rv(&mut obj, self.rv);
        self.commit(EventType::Deleted, key, obj.clone(), Some(previous));
        Some(obj)
    }

    /// Register a watcher starting after `from`: returns the retained events newer than `from`
    /// and a receiver for every later commit, with no gap between the two.
    pub fn watch_from(&mut self, from: u64) -> Result<(Vec<Arc<Event>>, Subscription), Expired> {
        if from < self.oldest {
            return Err(Expired {
                requested: from,
                oldest: self.oldest,
            });
        }
        let backlog = self
            .history
            .iter()
            .filter(|e| e.rv > from)
            .cloned()
            .collect();
        Ok((backlog, self.subscribe()))
    }

    /// A receiver for every later commit.
    pub fn subscribe(&mut self) -> mpsc::UnboundedReceiver<Arc<Event>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.watchers.push(tx);
        rx
    }

    /// Drop the retained history: watches from any RV older than the current one get 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest = self.rv;
    }

    /// A copy of the objects and counters with no watchers: what a dry-run request writes to,
    /// so it goes through every check without any client seeing an event.
    pub fn scratch_copy(&self) -> Store {
        Store {
            objects: self.objects.clone(),
            rv: self.rv,
            history: VecDeque::new(),
            capacity: 1,
            oldest: self.rv,
            watchers: Vec::new(),
            scratch: true,
        }
    }

    /// Every object.
    pub fn all(&self) -> impl Iterator<Item = (&ObjKey, &Value)> {
        self.objects.iter()
    }

    /// Number of retained events.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: &str) -> ObjKey {
        ("/services".into(), "default".into(), n.into())
    }

    fn obj(n: &str) -> Value {
        json!({"metadata": {"name": n}})
    }

    #[test]
    fn rv_is_global_and_increasing() {
        let mut s = Store::new(10);
        let a = s.put(key("a"), obj("a"));
        let b = s.put(key("b"), obj("b"));
        assert!(rv_of(&b) > rv_of(&a));
        let d = s.remove(&key("a")).unwrap();
        assert!(rv_of(&d) > rv_of(&b));
        assert_eq!(rv_of(&d), s.current_rv());
        assert!(s.remove(&key("a")).is_none());
    }

    #[test]
    fn list_is_scoped() {
        let mut s = Store::new(10);
        s.put(key("a"), obj("a"));
        s.put(("/services".into(), "other".into(), "b".into()), obj("b"));
        s.put(("/pods".into(), "default".into(), "c".into()), obj("c"));
        assert_eq!(s.list("/services", None).count(), 2);
        assert_eq!(s.list("/services", Some("default")).count(), 1);
        assert_eq!(s.list("/services", Some("nope")).count(), 0);
        assert_eq!(s.list("/pods", None).count(), 1);
    }

    #[test]
    fn watch_resumes_and_expires() {
        let mut s = Store::new(2);
        let start = s.current_rv();
        s.put(key("a"), obj("a"));
        let after_a = s.current_rv();
        s.put(key("b"), obj("b"));
        s.put(key("c"), obj("c"));
        // Capacity 2: the event for "a" is gone, so `start` is too old.
        assert_eq!(s.watch_from(start).unwrap_err().requested, start);
        let (backlog, _rx) = s.watch_from(after_a).unwrap();
        assert_eq!(backlog.len(), 2);
        s.compact();
        assert!(s.watch_from(after_a).is_err());
        let (backlog, mut rx) = s.watch_from(s.current_rv()).unwrap();
        assert!(backlog.is_empty());
        s.put(key("d"), obj("d"));
        assert_eq!(rx.try_recv().unwrap().kind, EventType::Added);
    }

    proptest! {
        #[test]
        fn replaying_history_reproduces_state(ops in proptest::collection::vec((0u8..4, any::<bool>()), 0..40)) {
            let mut s = Store::new(1000);
            let (_, mut rx) = s.watch_from(s.current_rv()).unwrap();
            for (n, del) in &ops {
                let name = n.to_string();
                if *del { s.remove(&key(&name)); } else { s.put(key(&name), obj(&name)); }
            }
            let mut replay: BTreeMap<String, Value> = BTreeMap::new();
            let mut last = 0;
            while let Ok(ev) = rx.try_recv() {
                prop_assert!(ev.rv > last);
                last = ev.rv;
                let name = ev.object["metadata"]["name"].as_str().unwrap().to_string();
                match ev.kind {
                    EventType::Deleted => { prop_assert!(replay.remove(&name).is_some()); }
                    EventType::Added => { prop_assert!(replay.insert(name, ev.object.clone()).is_none()); }
                    EventType::Modified => { prop_assert!(replay.insert(name, ev.object.clone()).is_some()); }
                }
            }
            let live: BTreeMap<String, Value> = s.list("/services", None).map(|(k, v)| (k.2.clone(), v.clone())).collect();
            prop_assert_eq!(replay, live);
        }
    }
}
