//! The default transform against torchvision (`Resize(R) + CenterCrop(R) + ToTensor + Normalize`
//! on PIL images) on real photos: golden values from `scripts/gen_transform_fixtures.py`.

use std::path::PathBuf;

use cm_data::item::SplitMix64;
use cm_data::transform::{load_and_transform, TransformConfig};
use cm_io::read_tensors;

#[test]
fn default_transform_matches_torchvision_within_2_over_255() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let golden = read_tensors(fixtures.join("golden/transforms.safetensors")).unwrap();
    assert!(golden.len() >= 8);
    for (key, reference) in &golden {
        let (file, r) = key.split_once('@').unwrap();
        let r: u32 = r.parse().unwrap();
        let ours = load_and_transform(
            &fixtures.join("images").join(file),
            &TransformConfig::center(r),
            &mut SplitMix64::new(0),
        )
        .unwrap();
        let reference = reference.clone().to_vec::<f32>().unwrap();
        assert_eq!(ours.len(), reference.len(), "{key}");
        // Mean absolute error in [0, 1] pixel units (values are in [-1, 1]: halve the difference).
        let mae = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| ((a - b) / 2.0).abs() as f64)
            .sum::<f64>()
            / ours.len() as f64;
        let max = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| ((a - b) / 2.0).abs())
            .fold(0.0f32, f32::max);
        println!(
            "{key}: mean abs error {:.3}/255, max {:.1}/255",
            mae * 255.0,
            max * 255.0
        );
        assert!(mae < 2.0 / 255.0, "{key}: mean abs error {mae}");
    }
}
