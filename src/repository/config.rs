//! TF Serving's `models.config`: a `tensorflow.serving.ModelServerConfig` in protobuf text format, unchanged,
//! or the same message received over gRPC (`HandleReloadConfigRequest`).
//!
//! The text is parsed with prost-reflect against our own descriptor set, then validated as a whole: any
//! problem rejects the entire config with one message naming it (line and column for syntax errors, the
//! model for semantic ones). Only `model_config_list` is supported, and every model must be ONNX.
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage};

use super::policy::VersionPolicy;
use super::uri::Location;
use crate::proto::tensorflow::serving as pb;
use pb::file_system_storage_path_source_config::servable_version_policy::PolicyChoice;
use pb::model_server_config::Config;

/// Full name of the text-format root message.
const ROOT_MESSAGE: &str = "tensorflow.serving.ModelServerConfig";

/// The only `model_platform` maas serves (an empty platform means this one).
pub const ONNX_PLATFORM: &str = "onnx";

/// One validated entry of the config's `model_config_list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// Model name, unique within the config.
    pub name: String,
    /// Directory (absolute, or resolved against the config's directory) or object-store prefix
    /// holding the numbered version directories.
    pub base_path: Location,
    /// Which versions to serve (`latest { num_versions: 0 }` is normalised to `Latest(1)`).
    pub policy: VersionPolicy,
    /// Version labels (`version_labels`): label -> version.
    pub labels: BTreeMap<String, i64>,
}

/// Parses the text format. Relative base_path values are resolved against `relative_to` (the config
/// file's directory).
/// Errors are whole-config errors with a message naming the problem (line/column from prost-reflect for
/// syntax errors, the model name for semantic ones).
pub fn parse_text(text: &str, relative_to: &Path) -> Result<Vec<ModelConfig>, String> {
    let cfg = parse_text_proto(text)?;
    validate(cfg, Some(relative_to))
}

/// Validates a config received over gRPC (HandleReloadConfigRequest). `relative_to` None => a relative
/// base_path is an error, as in TF Serving; Some(dir) => resolved against it.
pub fn from_proto(cfg: pb::ModelServerConfig, relative_to: Option<&Path>) -> Result<Vec<ModelConfig>, String> {
    validate(cfg, relative_to)
}

/// The descriptor pool of our `proto/` files, decoded once.
fn pool() -> Result<&'static DescriptorPool, String> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| format!("internal error: cannot decode the protobuf descriptor set: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Text format -> typed `ModelServerConfig`, with syntax errors located by line and column.
fn parse_text_proto(text: &str) -> Result<pb::ModelServerConfig, String> {
    parse_text_message(ROOT_MESSAGE, text)
}

/// Protobuf text format -> the typed message `root` (a full name from our `proto/` files), with
/// syntax errors located by line and column.
pub(crate) fn parse_text_message<T: prost::Message + Default>(root: &str, text: &str) -> Result<T, String> {
    let desc = pool()?
        .get_message_by_name(root)
        .ok_or_else(|| format!("internal error: message {root} not in the descriptor set"))?;
    let msg = DynamicMessage::parse_text_format(desc, text).map_err(|e| {
        let what = e.to_string();
        match error_offset(&e, text).and_then(|offset| line_column(text, offset)) {
            Some((line, column)) => format!("syntax error at line {line}, column {column}: {what}"),
            None => format!("syntax error: {what}"),
        }
    })?;
    msg.transcode_to::<T>().map_err(|e| format!("invalid message: {e}"))
}

/// Byte offset of a text-format parse error. prost-reflect exposes the span only through its `miette`
/// feature, which we do not enable, so it is read from the error's `Debug` form (`span: 12..17`, the last
/// field of every variant that has one). An error at end of input points just past the text.
fn error_offset(e: &prost_reflect::text_format::ParseError, text: &str) -> Option<usize> {
    let debug = format!("{e:?}");
    if let Some(at) = debug.rfind("span: ") {
        let digits: String = debug[at + "span: ".len()..].chars().take_while(char::is_ascii_digit).collect();
        if let Ok(offset) = digits.parse::<usize>() {
            return Some(offset);
        }
    }
    e.to_string().ends_with("reached end of input").then_some(text.len())
}

/// 1-based line and column (in characters) of a byte offset into `text`.
fn line_column(text: &str, offset: usize) -> Option<(usize, usize)> {
    let before = text.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    Some((line, column))
}

/// Validates the whole config; the first problem rejects it.
fn validate(cfg: pb::ModelServerConfig, relative_to: Option<&Path>) -> Result<Vec<ModelConfig>, String> {
    let list = match cfg.config {
        // Neither oneof member set: an empty config, serving no models.
        None => return Ok(Vec::new()),
        Some(Config::CustomModelConfig(any)) => {
            return Err(format!(
                "custom_model_config (type_url '{}') is not supported; maas accepts only model_config_list",
                any.type_url
            ))
        }
        Some(Config::ModelConfigList(list)) => list.config,
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut models = Vec::with_capacity(list.len());
    for (index, model) in list.into_iter().enumerate() {
        if model.name.is_empty() {
            return Err(format!("model #{} in model_config_list has an empty name", index + 1));
        }
        if !seen.insert(model.name.clone()) {
            return Err(format!("model name '{}' appears twice in the config", model.name));
        }
        models.push(validate_model(model, relative_to)?);
    }
    Ok(models)
}

/// Validates one model whose name is already known to be non-empty and unique.
fn validate_model(model: pb::ModelConfig, relative_to: Option<&Path>) -> Result<ModelConfig, String> {
    let name = model.name;

    #[allow(deprecated)]
    let model_type = model.model_type;
    if model_type != 0 {
        let type_name = pb::ModelType::try_from(model_type)
            .map(|t| t.as_str_name().to_owned())
            .unwrap_or_else(|_| model_type.to_string());
        return Err(format!(
            "model '{name}' sets the deprecated model_type field ({type_name}); \
             use model_platform: \"{ONNX_PLATFORM}\" instead"
        ));
    }
    if !model.model_platform.is_empty() && model.model_platform != ONNX_PLATFORM {
        return Err(format!(
            "model '{name}' has model_platform \"{}\"; maas serves model_platform \"{ONNX_PLATFORM}\" only",
            model.model_platform
        ));
    }

    let base_path = resolve_base_path(&name, &model.base_path, relative_to)?;
    let policy = version_policy(&name, model.model_version_policy)?;

    let labels: BTreeMap<String, i64> = model.version_labels.into_iter().collect();
    for (label, &version) in &labels {
        if label.is_empty() {
            return Err(format!("model '{name}' has a version label with an empty name"));
        }
        if version <= 0 {
            return Err(format!(
                "version label '{label}' of model '{name}' maps to version {version}; versions must be positive"
            ));
        }
    }

    Ok(ModelConfig { name, base_path, policy, labels })
}

fn resolve_base_path(name: &str, base_path: &str, relative_to: Option<&Path>) -> Result<Location, String> {
    if base_path.is_empty() {
        return Err(format!("model '{name}' has no base_path"));
    }
    let path = match Location::parse(base_path).map_err(|e| format!("base_path of model '{name}': {e}"))? {
        Location::Local(path) => path,
        remote => return Ok(remote),
    };
    if path.is_absolute() {
        return Ok(Location::Local(path));
    }
    match relative_to {
        Some(dir) => Ok(Location::Local(dir.join(path))),
        None => Err(format!(
            "base_path '{base_path}' of model '{name}' is relative; \
             a config sent over gRPC must use absolute paths, as in TF Serving"
        )),
    }
}

fn version_policy(
    name: &str,
    policy: Option<pb::file_system_storage_path_source_config::ServableVersionPolicy>,
) -> Result<VersionPolicy, String> {
    match policy.and_then(|p| p.policy_choice) {
        None => Ok(VersionPolicy::default()),
        Some(PolicyChoice::Latest(latest)) => Ok(VersionPolicy::Latest(latest.num_versions.max(1))),
        Some(PolicyChoice::All(_)) => Ok(VersionPolicy::All),
        Some(PolicyChoice::Specific(specific)) => {
            if specific.versions.is_empty() {
                return Err(format!("model '{name}' has a specific version policy with no versions"));
            }
            if let Some(bad) = specific.versions.iter().find(|&&v| v <= 0) {
                return Err(format!(
                    "model '{name}' has a specific version policy listing version {bad}; versions must be positive"
                ));
            }
            Ok(VersionPolicy::Specific(specific.versions.into_iter().collect::<BTreeSet<i64>>()))
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
