//! Unit tests of `models.config` parsing and validation.
use super::*;
use std::path::PathBuf;

/// TF Serving's documented example, adapted to model_platform "onnx".
const TF_SERVING_EXAMPLE: &str = r#"
model_config_list {
  config {
name: "resnet"
base_path: "/models/resnet"
model_platform: "onnx"
model_version_policy { specific { versions: 42 versions: 43 } }
version_labels { key: "stable" value: 42 }
version_labels { key: "canary" value: 43 }
  }
  config {
name: "ranker"
base_path: "ranker"
model_platform: "onnx"
model_version_policy { latest { num_versions: 2 } }
  }
}
"#;

const DIR: &str = "/etc/maas";

fn parse(text: &str) -> Result<Vec<ModelConfig>, String> {
    parse_text(text, Path::new(DIR))
}

fn parse_err(text: &str) -> String {
    match parse(text) {
        Ok(models) => panic!("expected an error, got {models:?}"),
        Err(e) => e,
    }
}

/// A config with one model whose `config { ... }` body is `body`.
fn one(body: &str) -> String {
    format!("model_config_list {{ config {{ {body} }} }}")
}

fn one_model(body: &str) -> ModelConfig {
    let mut models = parse(&one(body)).unwrap();
    assert_eq!(models.len(), 1);
    models.remove(0)
}

fn pb_model(name: &str, base_path: &str) -> pb::ModelConfig {
    pb::ModelConfig {
        name: name.into(),
        base_path: base_path.into(),
        model_platform: "onnx".into(),
        ..Default::default()
    }
}

fn pb_config(models: Vec<pb::ModelConfig>) -> pb::ModelServerConfig {
    pb::ModelServerConfig { config: Some(Config::ModelConfigList(pb::ModelConfigList { config: models })) }
}

// ---- accepted configs ----

#[test]
fn tf_serving_example() {
    let models = parse(TF_SERVING_EXAMPLE).unwrap();
    assert_eq!(
        models,
        vec![
            ModelConfig {
                name: "resnet".into(),
                base_path: Location::from(PathBuf::from("/models/resnet")),
                policy: VersionPolicy::Specific([42, 43].into_iter().collect()),
                labels: [("canary".to_string(), 43), ("stable".to_string(), 42)].into_iter().collect(),
            },
            ModelConfig {
                name: "ranker".into(),
                base_path: Location::from(PathBuf::from("/etc/maas/ranker")),
                policy: VersionPolicy::Latest(2),
                labels: BTreeMap::new(),
            },
        ]
    );
}

#[test]
fn relative_base_path_resolves_against_relative_to() {
    let models = parse_text(TF_SERVING_EXAMPLE, Path::new("/srv/configs")).unwrap();
    assert_eq!(models[1].base_path, Location::from(PathBuf::from("/srv/configs/ranker")));
    // absolute paths are kept as they are
    assert_eq!(models[0].base_path, Location::from(PathBuf::from("/models/resnet")));
    let m = one_model(r#"name: "m" base_path: "sub/dir/m""#);
    assert_eq!(m.base_path, Location::from(PathBuf::from("/etc/maas/sub/dir/m")));
}

#[test]
fn all_policy() {
    let m = one_model(r#"name: "m" base_path: "/m" model_version_policy { all {} }"#);
    assert_eq!(m.policy, VersionPolicy::All);
    // the colon before a message value is optional in the text format
    let m = one_model(r#"name: "m" base_path: "/m" model_version_policy: { all: {} }"#);
    assert_eq!(m.policy, VersionPolicy::All);
}

#[test]
fn policy_defaults_to_latest_one() {
    let m = one_model(r#"name: "m" base_path: "/m""#);
    assert_eq!(m.policy, VersionPolicy::Latest(1));
    let m = one_model(r#"name: "m" base_path: "/m" model_version_policy {}"#);
    assert_eq!(m.policy, VersionPolicy::Latest(1));
}

#[test]
fn latest_zero_or_unset_num_versions_is_one() {
    let m = one_model(r#"name: "m" base_path: "/m" model_version_policy { latest {} }"#);
    assert_eq!(m.policy, VersionPolicy::Latest(1));
    let m = one_model(r#"name: "m" base_path: "/m" model_version_policy { latest { num_versions: 0 } }"#);
    assert_eq!(m.policy, VersionPolicy::Latest(1));
}

#[test]
fn specific_versions_are_deduplicated() {
    let m = one_model(
        r#"name: "m" base_path: "/m"
           model_version_policy { specific { versions: [3, 1, 3] } }"#,
    );
    assert_eq!(m.policy, VersionPolicy::Specific([1, 3].into_iter().collect()));
}

#[test]
fn empty_platform_means_onnx() {
    let m = one_model(r#"name: "m" base_path: "/m""#);
    assert_eq!(m.name, "m");
    let m = one_model(r#"name: "m" base_path: "/m" model_platform: """#);
    assert_eq!(m.name, "m");
}

#[test]
fn unspecified_model_type_is_accepted() {
    let m = one_model(r#"name: "m" base_path: "/m" model_type: MODEL_TYPE_UNSPECIFIED"#);
    assert_eq!(m.name, "m");
}

#[test]
fn empty_configs_serve_nothing() {
    assert_eq!(parse("").unwrap(), vec![]);
    assert_eq!(parse("  \n# only a comment\n").unwrap(), vec![]);
    assert_eq!(parse("model_config_list {}").unwrap(), vec![]);
    assert_eq!(parse("model_config_list: { }").unwrap(), vec![]);
}

#[test]
fn comments_are_allowed() {
    let text = r#"
# served models
model_config_list {
  config {
name: "m"  # the model
base_path: "/m"
  }
}
"#;
    assert_eq!(parse(text).unwrap().len(), 1);
}

#[test]
fn model_order_is_kept() {
    let text = r#"model_config_list {
        config { name: "b" base_path: "/b" }
        config { name: "a" base_path: "/a" }
        config { name: "c" base_path: "/c" }
    }"#;
    let names: Vec<String> = parse(text).unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["b", "a", "c"]);
}

#[test]
fn several_labels_may_name_one_version() {
    let m = one_model(
        r#"name: "m" base_path: "/m"
           version_labels { key: "stable" value: 1 }
           version_labels { key: "prod" value: 1 }"#,
    );
    assert_eq!(m.labels.get("stable"), Some(&1));
    assert_eq!(m.labels.get("prod"), Some(&1));
}

#[test]
fn logging_config_is_ignored() {
    let m = one_model(r#"name: "m" base_path: "/m" logging_config {}"#);
    assert_eq!(m.name, "m");
}

// ---- syntax errors ----

#[test]
fn syntax_error_names_line_and_column() {
    let text = "model_config_list {\n  config {\n    name: \"m\"\n    base_path \"/m\"\n  }\n}\n";
    let e = parse_err(text);
    assert_eq!(e, "syntax error at line 4, column 15: expected ':' or a message value, but found '\"/m\"'");
}

#[test]
fn unknown_field_is_a_syntax_error() {
    let e = parse_err("model_config_list {\n  config { nme: \"m\" }\n}");
    assert_eq!(
        e,
        "syntax error at line 2, column 12: \
         field 'nme' not found for message 'tensorflow.serving.ModelConfig'"
    );
}

#[test]
fn unterminated_config_points_at_end_of_input() {
    assert_eq!(
        parse_err("model_config_list {\n  config {"),
        "syntax error at line 2, column 11: \
         expected '}' or a field name, but reached end of input"
    );
}

#[test]
fn field_set_twice_is_a_syntax_error() {
    assert_eq!(
        parse_err(&one(r#"name: "a" name: "b" base_path: "/m""#)),
        "syntax error at line 1, column 46: 'name' is already set"
    );
}

#[test]
fn two_policies_are_a_syntax_error() {
    assert_eq!(
        parse_err(&one(r#"name: "m" base_path: "/m" model_version_policy { all {} latest {} }"#,)),
        "syntax error at line 1, column 93: a value is already set for oneof 'policy_choice'"
    );
}

#[test]
fn out_of_range_num_versions_is_a_syntax_error() {
    assert_eq!(
        parse_err(&one(r#"name: "m" base_path: "/m" model_version_policy { latest { num_versions: -1 } }"#,)),
        "syntax error at line 1, column 102: expected value to be an unsigned 32-bit integer, \
         but the value -1 is out of range"
    );
}

#[test]
fn unknown_enum_value_is_a_syntax_error() {
    assert_eq!(
        parse_err(&one(r#"name: "m" base_path: "/m" model_type: FOO"#)),
        "syntax error at line 1, column 68: \
         value 'FOO' was not found for enum 'tensorflow.serving.ModelType'"
    );
}

#[test]
fn line_column_counts_characters() {
    assert_eq!(line_column("abc", 0), Some((1, 1)));
    assert_eq!(line_column("abc", 3), Some((1, 4)));
    assert_eq!(line_column("a\nbc", 3), Some((2, 2)));
    assert_eq!(line_column("é\néx", 5), Some((2, 2)));
    assert_eq!(line_column("é", 1), None); // not a character boundary
    assert_eq!(line_column("a", 9), None);
}

// ---- rejections ----

#[test]
fn custom_model_config_is_rejected() {
    let text = r#"custom_model_config { type_url: "type.googleapis.com/x.Custom" }"#;
    assert_eq!(
        parse_err(text),
        "custom_model_config (type_url 'type.googleapis.com/x.Custom') is not supported; \
         maas accepts only model_config_list"
    );
}

#[test]
fn empty_name_is_rejected() {
    let text = r#"model_config_list {
        config { name: "a" base_path: "/a" }
        config { base_path: "/b" }
    }"#;
    assert_eq!(parse_err(text), "model #2 in model_config_list has an empty name");
    assert_eq!(parse_err(&one(r#"name: "" base_path: "/a""#)), "model #1 in model_config_list has an empty name");
}

#[test]
fn duplicate_name_is_rejected() {
    let text = r#"model_config_list {
        config { name: "x" base_path: "/a" }
        config { name: "y" base_path: "/b" }
        config { name: "x" base_path: "/c" }
    }"#;
    assert_eq!(parse_err(text), "model name 'x' appears twice in the config");
    // the duplicate is what is reported, even when the second entry has other problems
    let text = r#"model_config_list {
        config { name: "x" base_path: "/a" }
        config { name: "x" model_platform: "tensorflow" }
    }"#;
    assert_eq!(parse_err(text), "model name 'x' appears twice in the config");
}

#[test]
fn missing_or_empty_base_path_is_rejected() {
    assert_eq!(parse_err(&one(r#"name: "m""#)), "model 'm' has no base_path");
    assert_eq!(parse_err(&one(r#"name: "m" base_path: """#)), "model 'm' has no base_path");
}

#[test]
fn object_store_base_paths() {
    let m = one_model(r#"name: "m" base_path: "s3://bucket/models/m""#);
    assert_eq!(m.base_path.to_string(), "s3://bucket/models/m");
    assert!(m.base_path.local().is_none());
    let m = one_model(r#"name: "m" base_path: "file:///srv/m""#);
    assert_eq!(m.base_path, Location::from(PathBuf::from("/srv/m")));
    assert_eq!(
        parse_err(&one(r#"name: "m" base_path: "hdfs://nn/m""#)),
        "base_path of model 'm': 'hdfs://nn/m' has the unsupported scheme 'hdfs://'; maas reads s3://, gs://, \
         az://, as://<account>/, file:// and plain paths"
    );
}

#[test]
fn other_platform_is_rejected() {
    assert_eq!(
        parse_err(&one(r#"name: "m" base_path: "/m" model_platform: "tensorflow""#)),
        "model 'm' has model_platform \"tensorflow\"; maas serves model_platform \"onnx\" only"
    );
    assert_eq!(
        parse_err(&one(r#"name: "m" base_path: "/m" model_platform: "ONNX""#)),
        "model 'm' has model_platform \"ONNX\"; maas serves model_platform \"onnx\" only"
    );
}

#[test]
fn deprecated_model_type_is_rejected() {
    assert_eq!(
        parse_err(&one(r#"name: "m" base_path: "/m" model_type: TENSORFLOW"#)),
        "model 'm' sets the deprecated model_type field (TENSORFLOW); \
         use model_platform: \"onnx\" instead"
    );
    assert_eq!(
        parse_err(&one(r#"name: "m" base_path: "/m" model_platform: "onnx" model_type: OTHER"#)),
        "model 'm' sets the deprecated model_type field (OTHER); \
         use model_platform: \"onnx\" instead"
    );
}

#[test]
fn unknown_model_type_number_is_rejected() {
    let mut model = pb_model("m", "/m");
    #[allow(deprecated)]
    {
        model.model_type = 7;
    }
    assert_eq!(
        from_proto(pb_config(vec![model]), None).unwrap_err(),
        "model 'm' sets the deprecated model_type field (7); \
         use model_platform: \"onnx\" instead"
    );
}

#[test]
fn specific_without_versions_is_rejected() {
    assert_eq!(
        parse_err(&one(r#"name: "m" base_path: "/m" model_version_policy { specific {} }"#)),
        "model 'm' has a specific version policy with no versions"
    );
}

#[test]
fn specific_non_positive_version_is_rejected() {
    assert_eq!(
        parse_err(&one(r#"name: "m" base_path: "/m" model_version_policy { specific { versions: [1, 0] } }"#)),
        "model 'm' has a specific version policy listing version 0; versions must be positive"
    );
    assert_eq!(
        parse_err(&one(r#"name: "m" base_path: "/m" model_version_policy { specific { versions: -3 } }"#)),
        "model 'm' has a specific version policy listing version -3; versions must be positive"
    );
}

#[test]
fn non_positive_label_version_is_rejected() {
    assert_eq!(
        parse_err(&one(r#"name: "m" base_path: "/m" version_labels { key: "stable" value: 0 }"#)),
        "version label 'stable' of model 'm' maps to version 0; versions must be positive"
    );
    assert_eq!(
        parse_err(&one(r#"name: "m" base_path: "/m" version_labels { key: "canary" value: -2 }"#)),
        "version label 'canary' of model 'm' maps to version -2; versions must be positive"
    );
}

#[test]
fn empty_label_name_is_rejected() {
    assert_eq!(
        parse_err(&one(r#"name: "m" base_path: "/m" version_labels { key: "" value: 1 }"#)),
        "model 'm' has a version label with an empty name"
    );
}

#[test]
fn one_bad_model_rejects_the_whole_config() {
    let text = r#"model_config_list {
        config { name: "good" base_path: "/good" }
        config { name: "bad" base_path: "/bad" model_platform: "tensorflow" }
    }"#;
    let e = parse_err(text);
    assert!(e.starts_with("model 'bad' has model_platform"), "{e}");
}

// ---- from_proto (HandleReloadConfigRequest) ----

#[test]
fn from_proto_accepts_absolute_paths_without_relative_to() {
    let models = from_proto(pb_config(vec![pb_model("a", "/models/a"), pb_model("b", "/models/b")]), None).unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0].name, "a");
    assert_eq!(models[0].base_path, Location::from(PathBuf::from("/models/a")));
    assert_eq!(models[0].policy, VersionPolicy::Latest(1));
    assert_eq!(models[1].name, "b");
}

#[test]
fn from_proto_rejects_relative_path_without_relative_to() {
    assert_eq!(
        from_proto(pb_config(vec![pb_model("m", "models/m")]), None).unwrap_err(),
        "base_path 'models/m' of model 'm' is relative; \
         a config sent over gRPC must use absolute paths, as in TF Serving"
    );
}

#[test]
fn from_proto_resolves_relative_path_with_relative_to() {
    let models = from_proto(pb_config(vec![pb_model("m", "models/m")]), Some(Path::new("/repo"))).unwrap();
    assert_eq!(models[0].base_path, Location::from(PathBuf::from("/repo/models/m")));
}

#[test]
fn from_proto_empty_config_serves_nothing() {
    assert_eq!(from_proto(pb::ModelServerConfig::default(), None).unwrap(), vec![]);
    assert_eq!(from_proto(pb_config(vec![]), None).unwrap(), vec![]);
}

#[test]
fn from_proto_rejects_custom_model_config() {
    let cfg = pb::ModelServerConfig {
        config: Some(Config::CustomModelConfig(prost_types::Any {
            type_url: "type.googleapis.com/x.Custom".into(),
            value: vec![],
        })),
    };
    assert_eq!(
        from_proto(cfg, None).unwrap_err(),
        "custom_model_config (type_url 'type.googleapis.com/x.Custom') is not supported; \
         maas accepts only model_config_list"
    );
}

#[test]
fn from_proto_runs_the_same_validation() {
    let mut m = pb_model("m", "/m");
    m.model_version_policy = Some(pb::file_system_storage_path_source_config::ServableVersionPolicy {
        policy_choice: Some(PolicyChoice::Specific(
            pb::file_system_storage_path_source_config::servable_version_policy::Specific { versions: vec![] },
        )),
    });
    assert_eq!(
        from_proto(pb_config(vec![m]), None).unwrap_err(),
        "model 'm' has a specific version policy with no versions"
    );
    assert_eq!(
        from_proto(pb_config(vec![pb_model("d", "/a"), pb_model("d", "/b")]), None).unwrap_err(),
        "model name 'd' appears twice in the config"
    );
}

#[test]
fn text_and_proto_agree() {
    let text = parse(TF_SERVING_EXAMPLE).unwrap();
    let cfg = parse_text_proto(TF_SERVING_EXAMPLE).unwrap();
    let proto = from_proto(cfg, Some(Path::new(DIR))).unwrap();
    assert_eq!(text, proto);
}
