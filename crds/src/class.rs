//! Which LoadBalancer Services are Lodestone's. The controller and the speaker must agree on
//! this to the letter, so the rule lives here, once.

use k8s_openapi::api::core::v1::Service;

/// The `spec.loadBalancerClass` Lodestone answers to unless told otherwise.
pub const DEFAULT_CLASS: &str = "lodestone.dev/lb";

/// Services of `type: LoadBalancer` whose `spec.loadBalancerClass` is `class`, or that name no
/// class at all when `default_class` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassFilter {
    /// Services with exactly this `spec.loadBalancerClass` are ours.
    pub class: String,
    /// Services with no class are ours too (false when another implementation is the default).
    pub default_class: bool,
}

impl Default for ClassFilter {
    fn default() -> Self {
        ClassFilter {
            class: DEFAULT_CLASS.to_string(),
            default_class: true,
        }
    }
}

impl ClassFilter {
    /// True when the Service is `type: LoadBalancer` with our class (or none, if we are the
    /// default).
    pub fn is_ours(&self, svc: &Service) -> bool {
        let Some(spec) = svc.spec.as_ref() else {
            return false;
        };
        if spec.type_.as_deref() != Some("LoadBalancer") {
            return false;
        }
        match spec.load_balancer_class.as_deref() {
            Some(class) => class == self.class,
            None => self.default_class,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "s"}, "spec": spec})).unwrap()
    }

    #[test]
    fn the_rule() {
        let f = ClassFilter::default();
        assert!(f.is_ours(&svc(json!({"type": "LoadBalancer"}))));
        assert!(f.is_ours(&svc(
            json!({"type": "LoadBalancer", "loadBalancerClass": DEFAULT_CLASS})
        )));
        assert!(!f.is_ours(&svc(
            json!({"type": "LoadBalancer", "loadBalancerClass": "other.io/lb"})
        )));
        assert!(!f.is_ours(&svc(json!({"type": "ClusterIP"}))));
        let strict = ClassFilter {
            default_class: false,
            ..ClassFilter::default()
        };
        assert!(!strict.is_ours(&svc(json!({"type": "LoadBalancer"}))));
        assert!(strict.is_ours(&svc(
            json!({"type": "LoadBalancer", "loadBalancerClass": DEFAULT_CLASS})
        )));
    }
}
