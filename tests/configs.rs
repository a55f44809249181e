//! The committed run configs (`configs/*.toml`) are the presets of the code, key for key, and the
//! examples' flags override them.

use consistency_models::cli::{default_config_text, TrainArgs};
use consistency_models::train::config::{Method, PeersPerDevice, RunConfig};
use consistency_models::train::trainer::TargetNetwork;

#[test]
fn committed_configs_equal_the_presets() {
    for method in [Method::Ct, Method::Cd, Method::Multiboundary] {
        let path = format!("configs/{}.toml", method.name());
        let from_file =
            RunConfig::from_toml_str(default_config_text(method), path.as_ref(), method)
                .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            from_file,
            RunConfig::preset(method),
            "{path} drifted from RunConfig::preset"
        );
    }
}

#[test]
fn flags_override_the_config() {
    use clap::Parser;
    let args = TrainArgs::parse_from([
        "x",
        "--steps",
        "7",
        "--batch",
        "3",
        "--lr",
        "2e-4",
        "--seed",
        "9",
        "--out",
        "somewhere",
        "--trainable",
        "unet",
        "--resolution",
        "64",
    ]);
    let config = args.resolve(Method::Cd).unwrap();
    assert_eq!(config.train.steps, 7);
    assert_eq!(config.train.batch_size, 3);
    assert_eq!(config.train.lr, 2e-4);
    assert_eq!(config.train.seed, 9);
    assert_eq!(config.output.dir, std::path::PathBuf::from("somewhere"));
    assert_eq!(config.data.resolution, Some(64));
    assert!(
        config.model.teacher.is_some(),
        "the default teacher is filled in"
    );
    // Peers per device: "auto" unless given; one that does not divide the batch is named.
    assert_eq!(config.train.peers_per_device, PeersPerDevice::AUTO);
    let args = TrainArgs::parse_from(["x", "--batch", "8", "--peers-per-device", "4"]);
    let config = args.resolve(Method::Cd).unwrap();
    assert_eq!(config.train.peers_per_device, PeersPerDevice::Count(4));
    let args = TrainArgs::parse_from(["x", "--batch", "3", "--peers-per-device", "2"]);
    let err = args.resolve(Method::Cd).unwrap_err();
    assert!(format!("{err:#}").contains("peers_per_device"), "{err:#}");
    // A bad override is named with its key.
    let args = TrainArgs::parse_from(["x", "--steps", "0"]);
    let err = args.resolve(Method::Cd).unwrap_err();
    assert!(format!("{err:#}").contains("train.steps"), "{err:#}");
    // clap refuses a flag without its value instead of swallowing the next flag.
    let err = TrainArgs::try_parse_from(["x", "--out", "--steps", "3"]).unwrap_err();
    assert!(err.to_string().contains("--out"), "{err}");
    assert!(
        TrainArgs::try_parse_from(["x", "--coco", "c.json"]).is_err(),
        "--coco needs --images"
    );
}

#[test]
fn the_sd15_config_reads_and_sets_the_lcm_recipe() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/sd15-cd.toml");
    let config = RunConfig::from_toml_file(&path, Method::Cd).unwrap();
    config.validate().unwrap();
    assert_eq!(config.consistency.solver_steps, 50);
    assert_eq!(config.train.lr, 1e-4);
    assert_eq!(config.data.resolution, Some(512));
    assert!(config.model.gradient_checkpointing);
    assert_eq!(config.consistency.target, TargetNetwork::StopGrad);
    // Everything it does not name is the demo preset's.
    assert_eq!(
        config.model.lora_rank,
        RunConfig::preset(Method::Cd).model.lora_rank
    );
}
