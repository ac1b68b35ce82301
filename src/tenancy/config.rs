//! The tenants file (`--tenant-config-file`, text `maas.TenancyConfig`): parsed and validated whole.
use super::keys::{self, Digest};
use crate::proto::maas as pb;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use time::OffsetDateTime;

/// Limits of a tier or of one model; `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_second: Option<u32>,
    pub burst: Option<u32>,
    pub rows_per_minute: Option<u32>,
    pub max_concurrent: Option<u32>,
}

/// Which models a tenant may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Models {
    All,
    Only(BTreeSet<String>),
}

impl Models {
    pub fn allows(&self, model: &str) -> bool {
        match self {
            Models::All => true,
            Models::Only(set) => set.contains(model),
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeySpec {
    pub id: String,
    pub digest: Digest,
    pub expires: Option<OffsetDateTime>,
}

#[derive(Debug, Clone)]
pub struct TenantSpec {
    pub name: String,
    pub admin: bool,
    pub models: Models,
    /// The tier's limits (tenant-wide).
    pub limits: Limits,
    /// Per model: the fields `model_limits` set (they override the tier's for that model).
    pub model_limits: BTreeMap<String, Limits>,
    pub keys: Vec<KeySpec>,
}

/// How a verified client certificate names a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertMatch {
    SanUri(String),
    SanDns(String),
    Sha256([u8; 32]),
}

#[derive(Debug, Clone, Default)]
pub struct TenancySpec {
    pub tenants: BTreeMap<String, TenantSpec>,
    pub certs: HashMap<CertMatch, String>,
    pub anonymous: Option<String>,
}

fn valid_name(n: &str) -> bool {
    (1..=63).contains(&n.len())
        && n.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

fn limits(what: &str, l: Option<&pb::Limits>) -> Result<Limits, String> {
    let Some(l) = l else { return Ok(Limits::default()) };
    let check = |field: &str, v: Option<u32>| match v {
        Some(0) => Err(format!("{what}: {field} must be at least 1 (leave it out for no limit)")),
        _ => Ok(v),
    };
    let out = Limits {
        requests_per_second: check("requests_per_second", l.requests_per_second)?,
        burst: check("burst", l.burst)?,
        rows_per_minute: check("rows_per_minute", l.rows_per_minute)?,
        max_concurrent: check("max_concurrent", l.max_concurrent)?,
    };
    if out.burst.is_some() && out.requests_per_second.is_none() {
        return Err(format!("{what}: burst needs requests_per_second"));
    }
    Ok(out)
}

/// RFC 3339, e.g. `2027-06-30T00:00:00Z`.
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Parses and validates a tenants file; any problem rejects the whole file.
pub fn parse(text: &str) -> Result<TenancySpec, String> {
    let cfg: pb::TenancyConfig = crate::repository::config::parse_text_message("maas.TenancyConfig", text)?;
    let mut tiers: HashMap<String, Limits> = HashMap::new();
    for t in &cfg.tiers {
        if !valid_name(&t.name) {
            return Err(format!("tier name '{}' must match [a-z0-9_-]{{1,63}}", t.name));
        }
        let l = limits(&format!("tier '{}'", t.name), t.limits.as_ref())?;
        if tiers.insert(t.name.clone(), l).is_some() {
            return Err(format!("tier '{}' is defined twice", t.name));
        }
    }
    let mut out = TenancySpec::default();
    let mut key_ids: HashMap<String, String> = HashMap::new();
    for t in cfg.tenants {
        if !valid_name(&t.name) {
            return Err(format!("tenant name '{}' must match [a-z0-9_-]{{1,63}}", t.name));
        }
        let name = t.name.clone();
        if out.tenants.contains_key(&name) {
            return Err(format!("tenant '{name}' is defined twice"));
        }
        let tier = if t.tier.is_empty() {
            Limits::default()
        } else {
            *tiers.get(&t.tier).ok_or_else(|| {
                let mut known: Vec<&str> = tiers.keys().map(String::as_str).collect();
                known.sort_unstable();
                format!("tenant '{name}' names tier '{}', which is not defined; tiers: [{}]", t.tier, known.join(", "))
            })?
        };
        let admin = match pb::Role::try_from(t.role) {
            Ok(pb::Role::Admin) => true,
            Ok(pb::Role::User) => false,
            Err(_) => return Err(format!("tenant '{name}': unknown role {}", t.role)),
        };
        let models = if t.models.iter().any(|m| m == "*") {
            Models::All
        } else {
            Models::Only(t.models.iter().cloned().collect())
        };
        let mut model_limits = BTreeMap::new();
        for ml in &t.model_limits {
            if ml.model.is_empty() {
                return Err(format!("tenant '{name}': model_limits needs a model"));
            }
            let l = limits(&format!("tenant '{name}' model '{}'", ml.model), ml.limits.as_ref())?;
            if model_limits.insert(ml.model.clone(), l).is_some() {
                return Err(format!("tenant '{name}': model_limits for model '{}' given twice", ml.model));
            }
        }
        let mut keys = Vec::new();
        for k in &t.keys {
            if !keys::valid_id(&k.id) {
                return Err(format!("tenant '{name}': key id '{}' must be 10 characters [a-z0-9]", k.id));
            }
            if let Some(other) = key_ids.insert(k.id.clone(), name.clone()) {
                return Err(format!("key id '{}' is used twice (tenants '{other}' and '{name}')", k.id));
            }
            // The digest itself is never echoed: it is a secret.
            let digest = Digest::from_hex(&k.sha256)
                .ok_or_else(|| format!("tenant '{name}' key '{}': sha256 must be 64 lower-case hex digits", k.id))?;
            let expires = if k.expires.is_empty() {
                None
            } else {
                Some(parse_time(&k.expires).ok_or_else(|| {
                    format!(
                        "tenant '{name}' key '{}': expires '{}' is not an RFC 3339 time (e.g. 2027-06-30T00:00:00Z)",
                        k.id, k.expires
                    )
                })?)
            };
            keys.push(KeySpec { id: k.id.clone(), digest, expires });
        }
        for c in &t.client_certs {
            use pb::client_cert::Match;
            let m = match &c.r#match {
                Some(Match::SanUri(u)) if !u.is_empty() => CertMatch::SanUri(u.clone()),
                Some(Match::SanDns(d)) if !d.is_empty() => CertMatch::SanDns(d.to_ascii_lowercase()),
                Some(Match::Sha256(h)) => CertMatch::Sha256(
                    Digest::from_hex(h)
                        .ok_or_else(|| {
                            format!("tenant '{name}': client_certs sha256 must be 64 lower-case hex digits, got '{h}'")
                        })?
                        .0,
                ),
                _ => return Err(format!("tenant '{name}': client_certs needs san_uri, san_dns or sha256")),
            };
            if let Some(other) = out.certs.insert(m.clone(), name.clone()) {
                return Err(format!("client certificate {m:?} maps to two tenants ('{other}' and '{name}')"));
            }
        }
        out.tenants.insert(name.clone(), TenantSpec { name, admin, models, limits: tier, model_limits, keys });
    }
    if !cfg.anonymous_tenant.is_empty() {
        if !out.tenants.contains_key(&cfg.anonymous_tenant) {
            return Err(format!("anonymous_tenant '{}' is not a tenant of this file", cfg.anonymous_tenant));
        }
        out.anonymous = Some(cfg.anonymous_tenant);
    }
    Ok(out)
}

/// Reads and validates a tenants file.
pub fn read(file: &std::path::Path) -> Result<TenancySpec, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("cannot read tenants file {}: {e}", file.display()))?;
    parse(&text).map_err(|e| format!("invalid tenants file {}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_the_documented_example() {
        let text = format!(
            r#"
tiers {{ name: "free"  limits {{ requests_per_second: 5  burst: 10  rows_per_minute: 600  max_concurrent: 2 }} }}
tiers {{ name: "gold"  limits {{ requests_per_second: 200  burst: 400  max_concurrent: 32 }} }}
tenants {{
  name: "acme"                     # [a-z0-9_-]{{1,63}}
  tier: "gold"
  models: "numbers_classifier"     # allow-list
  model_limits {{ model: "numbers_classifier" limits {{ rows_per_minute: 60000 }} }}
  keys {{ id: "k3v9q2m7xa" sha256: "{D}" expires: "2027-06-30T00:00:00Z" }}
  client_certs {{ san_uri: "spiffe://corp/acme" }}
}}
tenants {{ name: "ops" role: ADMIN models: "*" keys {{ id: "adm0000001" sha256: "{D}" }} }}
tenants {{ name: "public" tier: "free" models: "numbers_classifier" }}
anonymous_tenant: "public"
"#
        );
        let s = parse(&text).unwrap();
        let acme = &s.tenants["acme"];
        assert_eq!(acme.limits.requests_per_second, Some(200));
        assert_eq!(acme.model_limits["numbers_classifier"].rows_per_minute, Some(60000));
        assert!(acme.models.allows("numbers_classifier") && !acme.models.allows("other"));
        assert!(s.tenants["ops"].admin && s.tenants["ops"].models.allows("x"));
        assert_eq!(s.certs[&CertMatch::SanUri("spiffe://corp/acme".into())], "acme");
        assert_eq!(s.anonymous.as_deref(), Some("public"));
    }

    #[test]
    fn rejects_bad_files_whole() {
        let err = |t: &str| parse(t).unwrap_err();
        assert_eq!(
            err(r#"tenants { name: "a" tier: "x" }"#),
            "tenant 'a' names tier 'x', which is not defined; tiers: []"
        );
        assert_eq!(err(r#"tenants { name: "a" } tenants { name: "a" }"#), "tenant 'a' is defined twice");
        let dup = format!(
            r#"tenants {{ name: "a" keys {{ id: "k000000001" sha256: "{D}" }} }} tenants {{ name: "b" keys {{ id: "k000000001" sha256: "{D}" }} }}"#
        );
        assert_eq!(err(&dup), "key id 'k000000001' is used twice (tenants 'a' and 'b')");
        let e = err(r#"tenants { name: "a" keys { id: "k000000001" sha256: "XYZ" } }"#);
        assert_eq!(e, "tenant 'a' key 'k000000001': sha256 must be 64 lower-case hex digits");
        let bad_exp =
            format!(r#"tenants {{ name: "a" keys {{ id: "k000000001" sha256: "{D}" expires: "tomorrow" }} }}"#);
        assert!(err(&bad_exp).contains("expires 'tomorrow' is not an RFC 3339 time"));
        assert!(err(r#"tenants { name: "Bad Name" }"#).starts_with("tenant name 'Bad Name'"));
        assert!(err(r#"tiers { name: "t" limits { requests_per_second: 0 } }"#).contains("at least 1"));
        assert!(err("tenants { nme: 1 }").starts_with("syntax error at line 1"));
    }
}
