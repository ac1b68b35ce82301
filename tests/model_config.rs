//! models.config: version policies, labels, HandleReloadConfigRequest and the config file poller.
mod common;

use common::*;
use maas::manager::ModelSource;
use maas::proto::tensorflow::serving::{
    file_system_storage_path_source_config::{servable_version_policy, ServableVersionPolicy},
    model_server_config,
    model_spec::VersionChoice,
    ModelConfig, ModelConfigList, ModelServerConfig, ModelSpec, PredictRequest, ReloadConfigRequest,
};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tonic::Code;

/// A repository with model `m` at versions 1..=4 (answering 1..=4).
fn four_versions() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    for k in 1..=4 {
        publish(&repo.path().join("m"), k, &offset_model(k));
    }
    repo
}

fn config_file(dir: &Path, text: &str) -> std::path::PathBuf {
    let f = dir.join("models.config");
    std::fs::write(&f, text).unwrap();
    f
}

fn server_config(file: &Path) -> maas::ServeConfig {
    let models = maas::config::read_model_config(file).unwrap();
    let mut cfg = test_config("unused");
    cfg.source = ModelSource::List(models);
    cfg
}

fn label_req(model: &str, label: &str) -> PredictRequest {
    let mut r = offset_req(model, None);
    r.model_spec = Some(ModelSpec {
        name: model.into(),
        signature_name: String::new(),
        version_choice: Some(VersionChoice::VersionLabel(label.into())),
    });
    r
}

async fn answer_req(server: &TestServer, req: PredictRequest) -> Result<f32, tonic::Status> {
    Ok(server.predict_client().await.predict(req).await?.into_inner().outputs["y"].float_val[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_from_a_config_file() {
    let repo = four_versions();
    // relative base_path: resolved against the config file's directory
    let file = config_file(
        repo.path(),
        r#"model_config_list {
             config { name: "specific" base_path: "m" model_platform: "onnx"
                      model_version_policy { specific { versions: 1 versions: 3 } } }
             config { name: "every" base_path: "m" model_platform: "onnx" model_version_policy { all {} } }
             config { name: "two" base_path: "m" model_platform: "onnx"
                      model_version_policy { latest { num_versions: 2 } } }
             config { name: "default" base_path: "m" model_platform: "onnx" }
           }"#,
    );
    let server = TestServer::ready(server_config(&file)).await;
    let mut got = HashMap::new();
    for name in ["specific", "every", "two", "default"] {
        let mut a = available(&server, name).await;
        a.sort();
        got.insert(name, a);
    }
    assert_eq!(got["specific"], vec![1, 3]);
    assert_eq!(got["every"], vec![1, 2, 3, 4]);
    assert_eq!(got["two"], vec![3, 4]);
    assert_eq!(got["default"], vec![4]);
    assert_eq!(answer_req(&server, offset_req("specific", None)).await.unwrap(), 3.0, "latest of the served ones");
    assert_eq!(answer_req(&server, offset_req("every", Some(2))).await.unwrap(), 2.0);
}

/// (name, base path, specific versions, labels) per model.
type ModelEntry<'a> = (&'a str, &'a Path, Option<Vec<i64>>, Vec<(&'a str, i64)>);

fn proto_config(models: Vec<ModelEntry<'_>>) -> ModelServerConfig {
    ModelServerConfig {
        config: Some(model_server_config::Config::ModelConfigList(ModelConfigList {
            config: models
                .into_iter()
                .map(|(name, base, specific, labels)| ModelConfig {
                    name: name.into(),
                    base_path: base.display().to_string(),
                    model_platform: "onnx".into(),
                    model_version_policy: specific.map(|versions| ServableVersionPolicy {
                        policy_choice: Some(servable_version_policy::PolicyChoice::Specific(
                            servable_version_policy::Specific { versions },
                        )),
                    }),
                    version_labels: labels.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                    ..Default::default()
                })
                .collect(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_move_atomically_through_reload_config() {
    let repo = four_versions();
    let m = repo.path().join("m");
    let file = config_file(
        repo.path(),
        r#"model_config_list { config { name: "m" base_path: "m" model_platform: "onnx"
             model_version_policy { specific { versions: 1 versions: 2 } }
             version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } } }"#,
    );
    let server = TestServer::ready(server_config(&file)).await;
    assert_eq!(answer_req(&server, label_req("m", "stable")).await.unwrap(), 1.0);
    assert_eq!(answer_req(&server, label_req("m", "canary")).await.unwrap(), 2.0);
    let err = answer_req(&server, label_req("m", "beta")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "Unrecognized servable version label: 'beta' for model 'm'; its labels: ['canary', 'stable']"
    );

    // move stable -> 2 (an AVAILABLE version)
    let mut mc = server.model_client().await;
    let cfg = proto_config(vec![("m", &m, Some(vec![1, 2]), vec![("stable", 2), ("canary", 2)])]);
    let resp = mc.handle_reload_config_request(ReloadConfigRequest { config: Some(cfg), metric_names: vec![] }).await;
    let status = resp.unwrap().into_inner().status.unwrap();
    assert_eq!((status.error_code, status.error_message.as_str()), (0, ""));
    assert_eq!(answer_req(&server, label_req("m", "stable")).await.unwrap(), 2.0);

    // a label on a version that is not AVAILABLE: rejected whole, old config kept
    let cfg = proto_config(vec![("m", &m, Some(vec![1, 2]), vec![("stable", 4), ("canary", 2)])]);
    let err = mc.handle_reload_config_request(ReloadConfigRequest { config: Some(cfg), metric_names: vec![] }).await;
    let err = err.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        "Request to assign label 'stable' to version 4 of model 'm', which is not currently available for inference \
         (moving an existing label always needs an AVAILABLE version)"
    );
    assert_eq!(answer_req(&server, label_req("m", "stable")).await.unwrap(), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_config_adds_and_removes_models_and_rejects_invalid_configs() {
    let repo = four_versions();
    let m = repo.path().join("m");
    let n = repo.path().join("n");
    publish(&n, 7, &offset_model(7));
    let file =
        config_file(repo.path(), r#"model_config_list { config { name: "m" base_path: "m" model_platform: "onnx" } }"#);
    let server = TestServer::ready(server_config(&file)).await;
    let mut mc = server.model_client().await;

    // invalid: duplicate names, relative base path, wrong platform -> INVALID_ARGUMENT, nothing changes
    let dup = proto_config(vec![("m", &m, None, vec![]), ("m", &n, None, vec![])]);
    let err = mc.handle_reload_config_request(ReloadConfigRequest { config: Some(dup), metric_names: vec![] }).await;
    let err = err.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("model name 'm' appears twice in the config"), "{}", err.message());
    let rel = proto_config(vec![("m", Path::new("relative/dir"), None, vec![])]);
    let err = mc.handle_reload_config_request(ReloadConfigRequest { config: Some(rel), metric_names: vec![] }).await;
    let err = err.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("relative"), "{}", err.message());
    assert_eq!(answer_req(&server, offset_req("m", None)).await.unwrap(), 4.0);

    // replace m by n: returns once n is loaded, m is gone
    let started = std::time::Instant::now();
    let cfg = proto_config(vec![("n", &n, None, vec![])]);
    let resp = mc.handle_reload_config_request(ReloadConfigRequest { config: Some(cfg), metric_names: vec![] }).await;
    let status = resp.unwrap().into_inner().status.unwrap();
    assert_eq!((status.error_code, status.error_message.as_str()), (0, ""));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(answer_req(&server, offset_req("n", None)).await.unwrap(), 7.0, "loaded when the RPC returned");
    let err = answer_req(&server, offset_req("m", None)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // a model that fails to load is reported, not a global block or hang
    let bad = repo.path().join("bad");
    publish(&bad, 1, b"garbage");
    let cfg = proto_config(vec![("n", &n, None, vec![]), ("bad", &bad, None, vec![])]);
    let resp = mc.handle_reload_config_request(ReloadConfigRequest { config: Some(cfg), metric_names: vec![] }).await;
    let status = resp.unwrap().into_inner().status.unwrap();
    assert_eq!(status.error_code, Code::FailedPrecondition as i32);
    assert!(
        status.error_message.starts_with(
            "config applied; 1 problem(s): model 'bad' version 1 failed to load: ONNX Runtime could not load"
        ),
        "{}",
        status.error_message
    );
    assert_eq!(answer_req(&server, offset_req("n", None)).await.unwrap(), 7.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_is_re_read_and_an_invalid_one_ignored() {
    let repo = four_versions();
    let file =
        config_file(repo.path(), r#"model_config_list { config { name: "m" base_path: "m" model_platform: "onnx" } }"#);
    let mut cfg = server_config(&file);
    cfg.model_config_file = Some((file.clone(), Duration::from_millis(100)));
    let server = TestServer::ready(cfg).await;
    assert_eq!(answer_req(&server, offset_req("m", None)).await.unwrap(), 4.0);

    std::fs::write(&file, "model_config_list { config { name: \"m\" ").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(answer_req(&server, offset_req("m", None)).await.unwrap(), 4.0, "a broken file keeps the old config");

    std::fs::write(
        &file,
        r#"model_config_list { config { name: "renamed" base_path: "m" model_platform: "onnx"
             model_version_policy { specific { versions: 2 } } } }"#,
    )
    .unwrap();
    wait_for(10, "the renamed model", || async {
        (answer_req(&server, offset_req("renamed", None)).await.ok()? == 2.0).then_some(())
    })
    .await;
    let err = answer_req(&server, offset_req("m", None)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_model_directory_affects_only_that_model() {
    let repo = four_versions();
    std::fs::write(repo.path().join("not_a_dir"), b"a file where a model directory should be").unwrap();
    let file = config_file(
        repo.path(),
        r#"model_config_list {
             config { name: "m" base_path: "m" model_platform: "onnx" }
             config { name: "b" base_path: "not_a_dir" model_platform: "onnx" } }"#,
    );
    let server = TestServer::ready(server_config(&file)).await;
    assert_eq!(answer_req(&server, offset_req("m", None)).await.unwrap(), 4.0);
    let err = answer_req(&server, offset_req("b", None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().starts_with("model 'b' has no available version: cannot read model directory"),
        "{}",
        err.message()
    );

    // a loaded model whose directory becomes unreadable keeps serving what it loaded
    let m = repo.path().join("m");
    std::fs::rename(&m, repo.path().join("m.moved")).unwrap();
    std::fs::write(&m, b"now a file").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(answer_req(&server, offset_req("m", None)).await.unwrap(), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_labels_may_point_at_unavailable_versions_with_the_flag() {
    let repo = four_versions();
    let m = repo.path().join("m");
    let file = config_file(
        repo.path(),
        r#"model_config_list { config { name: "m" base_path: "m" model_platform: "onnx"
             model_version_policy { specific { versions: 1 } } version_labels { key: "stable" value: 1 } } }"#,
    );
    let mut cfg = server_config(&file);
    cfg.manager.allow_labels_for_unavailable = true;
    let server = TestServer::ready(cfg).await;
    let mut mc = server.model_client().await;
    // a new label on version 2, which is not loaded yet, in the same config that starts loading it
    let cfg = proto_config(vec![("m", &m, Some(vec![1, 2]), vec![("stable", 1), ("next", 2)])]);
    let resp = mc.handle_reload_config_request(ReloadConfigRequest { config: Some(cfg), metric_names: vec![] }).await;
    let status = resp.unwrap().into_inner().status.unwrap();
    assert_eq!(status.error_code, 0, "{}", status.error_message);
    assert_eq!(answer_req(&server, label_req("m", "next")).await.unwrap(), 2.0);
    // moving an existing label to an unavailable version is still refused
    let cfg = proto_config(vec![("m", &m, Some(vec![1, 2]), vec![("stable", 3), ("next", 2)])]);
    let err = mc.handle_reload_config_request(ReloadConfigRequest { config: Some(cfg), metric_names: vec![] }).await;
    assert_eq!(err.unwrap_err().code(), Code::FailedPrecondition);
}
