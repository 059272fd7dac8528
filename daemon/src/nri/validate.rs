//! The validation of a container's adjustments once every plugin has made its own
//! (NRI v0.12): NRI's builtin default validator (`[nri.default_validator]`), then the
//! plugins that subscribed to ValidateContainerAdjustment, all at once. They see the
//! container as it was asked for, every adjustment and update, who made which
//! (`OwningPlugins`) and which plugins were consulted. A refusal fails CreateContainer,
//! naming the validator; nothing of the adjustments has been applied by then.

use super::adjust::Owners;
use super::*;
use berth_nri::api::Field;

/// NRI's annotation (on the pod) adding plugins a container requires
/// (`required-plugins.noderesource.dev`, also `.../pod` and `.../container.NAME`).
pub const REQUIRED_PLUGINS_ANNOTATION: &str = "required-plugins.noderesource.dev";

/// A pod annotation that applies to container `ctr`: `KEY/container.CTR`, else
/// `KEY/pod`, else `KEY` (NRI's `GetEffectiveAnnotation`).
fn effective_annotation<'a>(pod: &'a api::PodSandbox, key: &str, ctr: &str) -> Option<&'a str> {
    [
        format!("{key}/container.{ctr}"),
        format!("{key}/pod"),
        key.to_string(),
    ]
    .iter()
    .find_map(|k| pod.annotations.get(k))
    .map(String::as_str)
}

/// The plugin list of the required-plugins annotation: a YAML sequence of names, in
/// flow (`[a, "b"]`) or block (`- a` lines) style.
fn plugin_list(v: &str) -> std::result::Result<Vec<String>, String> {
    let v = v.trim();
    let items: Vec<&str> = if let Some(inner) = v.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("{v:?} is not a list"))?;
        inner.split(',').collect()
    } else {
        v.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.trim()
                    .strip_prefix('-')
                    .ok_or_else(|| format!("{v:?} is not a list"))
            })
            .collect::<std::result::Result<_, _>>()?
    };
    let unquote = |s: &str| {
        let s = s.trim();
        s.strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .or_else(|| s.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
            .unwrap_or(s)
            .to_string()
    };
    Ok(items
        .into_iter()
        .map(unquote)
        .filter(|s| !s.is_empty())
        .collect())
}

fn refused(why: String) -> Error {
    Error::FailedPrecondition(format!(
        "NRI default validator rejected the container's adjustments: {why}"
    ))
}

/// NRI's default validator (its v0.12.1 checks, in its order).
pub fn default_validator(
    cfg: &config::DefaultValidator,
    req: &api::ValidateContainerAdjustmentRequest,
    owners: &Owners,
) -> Result<()> {
    if !cfg.enable {
        return Ok(());
    }
    if cfg.reject_oci_hook_adjustment {
        if let Some(o) = owners.owner(Field::OciHooks, "") {
            return Err(refused(format!(
                "plugin(s) {o} attempted restricted OCI hook injection"
            )));
        }
    }
    if let Some(o) = owners.owner(Field::SeccompPolicy, "") {
        use api::security_profile::ProfileType;
        let profile = req
            .container
            .linux
            .as_ref()
            .and_then(|l| l.seccomp_profile.as_ref())
            .map(|p| p.profile_type.enum_value_or_default());
        let (reject, kind) = match profile {
            None | Some(ProfileType::UNCONFINED) => {
                (cfg.reject_unconfined_seccomp_adjustment, "unconfined")
            }
            Some(ProfileType::RUNTIME_DEFAULT) => (
                cfg.reject_runtime_default_seccomp_adjustment,
                "runtime default",
            ),
            Some(ProfileType::LOCALHOST) => (cfg.reject_custom_seccomp_adjustment, "custom"),
        };
        if reject {
            return Err(refused(format!(
                "plugin {o} attempted restricted {kind} seccomp policy adjustment"
            )));
        }
    }
    if cfg.reject_namespace_adjustment {
        let by: Vec<String> = owners
            .owned(Field::Namespace)
            .map(|(ns, p)| format!("{p} (namespace {ns:?})"))
            .collect();
        if !by.is_empty() {
            return Err(refused(format!(
                "attempted restricted namespace adjustment by plugin(s) {}",
                by.join(", ")
            )));
        }
    }
    required_plugins(cfg, req)?;
    if cfg.reject_sysctl_adjustment {
        let by: Vec<&str> = owners.owned(Field::Sysctl).map(|(_, p)| p).collect();
        if !by.is_empty() {
            return Err(refused(format!(
                "attempted restricted sysctl adjustment by plugin(s) {}",
                by.join(", ")
            )));
        }
    }
    Ok(())
}

fn required_plugins(
    cfg: &config::DefaultValidator,
    req: &api::ValidateContainerAdjustmentRequest,
) -> Result<()> {
    let ctr = req.container.name.as_str();
    if !cfg.tolerate_missing_plugins_annotation.is_empty() {
        if let Some(v) =
            effective_annotation(&req.pod, &cfg.tolerate_missing_plugins_annotation, ctr)
        {
            match v.trim() {
                "true" | "1" | "t" | "T" | "TRUE" | "True" => return Ok(()),
                "false" | "0" | "f" | "F" | "FALSE" | "False" => {}
                _ => {
                    return Err(refused(format!(
                        "invalid {} annotation {v:?}",
                        cfg.tolerate_missing_plugins_annotation
                    )))
                }
            }
        }
    }
    let mut required = cfg.required_plugins.clone();
    if let Some(v) = effective_annotation(&req.pod, REQUIRED_PLUGINS_ANNOTATION, ctr) {
        required.extend(plugin_list(v).map_err(|e| {
            refused(format!(
                "invalid {REQUIRED_PLUGINS_ANNOTATION} annotation: {e}"
            ))
        })?);
    }
    let present = |r: &str| {
        req.plugins
            .iter()
            .any(|p| p.name == r || berth_nri::plugin_name(&p.index, &p.name) == r)
    };
    let missing: Vec<&str> = required
        .iter()
        .map(String::as_str)
        .filter(|r| !present(r))
        .collect();
    match missing.len() {
        0 => Ok(()),
        1 => Err(refused(format!(
            "required plugin {:?} not present",
            missing[0]
        ))),
        _ => Err(refused(format!(
            "required plugins {:?} not present",
            missing.join(",")
        ))),
    }
}

impl Nri {
    /// Whether a container's creation is to be validated at all.
    pub(super) fn validating(&self) -> bool {
        self.cfg.default_validator.enable
            || self
                .active()
                .iter()
                .any(|p| p.subscribed(api::Event::VALIDATE_CONTAINER_ADJUSTMENT))
    }

    /// Runs the default validator, then every validator plugin (concurrently, each
    /// bounded by the request timeout). The first refusal or failure, in plugin order,
    /// is the error.
    pub(super) async fn validate(
        &self,
        req: api::ValidateContainerAdjustmentRequest,
        owners: &Owners,
    ) -> Result<()> {
        default_validator(&self.cfg.default_validator, &req, owners)?;
        let validators: Vec<Arc<Plugin>> = self
            .active()
            .into_iter()
            .filter(|p| p.subscribed(api::Event::VALIDATE_CONTAINER_ADJUSTMENT))
            .collect();
        let answers = futures_util::future::join_all(validators.iter().map(|p| {
            let req = &req;
            self.invoke(
                p,
                "ValidateContainerAdjustment",
                self.request_timeout(),
                |ctx| p.client.validate_container_adjustment(ctx, req),
            )
        }))
        .await;
        for (p, a) in validators.iter().zip(answers) {
            let a = a?;
            if a.reject {
                let reason = if a.reason.is_empty() {
                    "no reason given"
                } else {
                    a.reason.as_str()
                };
                return Err(Error::FailedPrecondition(format!(
                    "NRI validator {} rejected the container's adjustments: {reason}",
                    p.name()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_plugins_annotation_lists() {
        assert_eq!(plugin_list("[a, \"10-b\"]").unwrap(), ["a", "10-b"]);
        assert_eq!(plugin_list("- a\n- 'b'\n").unwrap(), ["a", "b"]);
        assert_eq!(plugin_list("[]").unwrap(), Vec::<String>::new());
        assert!(plugin_list("a").is_err());
    }

    fn request(
        annotations: &[(&str, &str)],
        plugins: &[(&str, &str)],
    ) -> api::ValidateContainerAdjustmentRequest {
        let mut req = api::ValidateContainerAdjustmentRequest::new();
        let mut pod = api::PodSandbox::new();
        for (k, v) in annotations {
            pod.annotations.insert(k.to_string(), v.to_string());
        }
        req.pod = protobuf::MessageField::some(pod);
        req.container = protobuf::MessageField::some(api::Container {
            name: "app".into(),
            ..Default::default()
        });
        req.plugins = plugins
            .iter()
            .map(|(i, n)| api::PluginInstance {
                index: i.to_string(),
                name: n.to_string(),
                ..Default::default()
            })
            .collect();
        req
    }

    #[test]
    fn default_validator_rules() {
        let mut cfg = config::DefaultValidator {
            enable: true,
            ..Default::default()
        };
        let mut owners = Owners::default();
        owners.accumulate(Field::OciHooks, "10-a");
        owners.accumulate(Field::OciHooks, "20-b");
        owners
            .claim(Field::Sysctl, "net.core.somaxconn", "20-b")
            .unwrap();
        let req = request(&[], &[("10", "a"), ("20", "b")]);
        default_validator(&cfg, &req, &owners).unwrap();
        cfg.reject_oci_hook_adjustment = true;
        let e = default_validator(&cfg, &req, &owners)
            .unwrap_err()
            .to_string();
        assert!(e.contains("10-a,20-b") && e.contains("OCI hook"), "{e}");
        cfg.reject_oci_hook_adjustment = false;
        cfg.reject_sysctl_adjustment = true;
        let e = default_validator(&cfg, &req, &owners)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sysctl") && e.contains("20-b"), "{e}");
        cfg.reject_sysctl_adjustment = false;

        // Required plugins: by name or IDX-NAME, from the config and the pod.
        cfg.required_plugins = vec!["a".into(), "20-b".into()];
        default_validator(&cfg, &req, &owners).unwrap();
        cfg.required_plugins.push("gpu".into());
        let e = default_validator(&cfg, &req, &owners)
            .unwrap_err()
            .to_string();
        assert!(e.contains("required plugin \"gpu\" not present"), "{e}");
        cfg.tolerate_missing_plugins_annotation = "tolerate".into();
        let tolerant = request(&[("tolerate/container.app", "true")], &[]);
        default_validator(&cfg, &tolerant, &owners).unwrap();
        cfg.required_plugins.clear();
        let annotated = request(
            &[("required-plugins.noderesource.dev/pod", "[a, c]")],
            &[("10", "a")],
        );
        let e = default_validator(&cfg, &annotated, &owners)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"c\""), "{e}");

        // Seccomp: by the container's own profile (none counts as unconfined).
        let mut s = Owners::default();
        s.claim(Field::SeccompPolicy, "", "10-a").unwrap();
        cfg.reject_unconfined_seccomp_adjustment = true;
        let e = default_validator(&cfg, &req, &s).unwrap_err().to_string();
        assert!(
            e.contains("10-a") && e.contains("unconfined seccomp"),
            "{e}"
        );
        cfg.enable = false;
        default_validator(&cfg, &req, &s).unwrap();
    }
}
