//! Caption sources, transforms, the synthetic dataset and every bad-input case, with files the
//! tests create themselves.

use std::path::{Path, PathBuf};

use burn::data::dataset::Dataset;
use cm_data::dataset::{CaptionDataset, DatasetOptions};
use cm_data::item::SplitMix64;
use cm_data::sources::{coco_captions, csv_subset, image_folder, CaptionChoice};
use cm_data::synthetic::{write_coco, SHAPES};
use cm_data::transform::{load_rgb, shorter_side_size, transform_rgb, Crop, TransformConfig};
use cm_data::DataError;
use image::{ImageBuffer, Luma, LumaA, Rgb, RgbImage, Rgba};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cm-data-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128])
    })
}

fn write_coco_file(dir: &Path, json: &str) -> PathBuf {
    let path = dir.join("captions.json");
    std::fs::write(&path, json).unwrap();
    path
}

#[test]
fn coco_first_random_and_all_captions() {
    let dir = temp("coco");
    let path = write_coco_file(
        &dir,
        r#"{"images": [{"id": 1, "file_name": "a.jpg", "width": 4}, {"id": 2, "file_name": "b.jpg"}],
            "annotations": [{"image_id": 1, "caption": "first of a"}, {"image_id": 2, "caption": "only b"},
                            {"image_id": 1, "caption": "second of a"}]}"#,
    );
    let first = coco_captions(&path, &dir, CaptionChoice::First).unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].caption, "first of a");
    assert_eq!(first[0].path, dir.join("a.jpg"));
    let all = coco_captions(&path, &dir, CaptionChoice::All).unwrap();
    assert_eq!(all.len(), 3);
    let r1 = coco_captions(&path, &dir, CaptionChoice::Random { seed: 7 }).unwrap();
    let r2 = coco_captions(&path, &dir, CaptionChoice::Random { seed: 7 }).unwrap();
    assert_eq!(r1, r2, "seeded choice is deterministic");
    let picks: std::collections::BTreeSet<String> = (0..20)
        .map(|s| {
            coco_captions(&path, &dir, CaptionChoice::Random { seed: s }).unwrap()[0]
                .caption
                .clone()
        })
        .collect();
    assert_eq!(
        picks.len(),
        2,
        "both captions of image 1 get picked for some seed"
    );
}

#[test]
fn coco_errors_name_the_problem() {
    let dir = temp("coco-bad");
    let path = write_coco_file(
        &dir,
        r#"{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 9, "caption": "x"}]}"#,
    );
    let err = coco_captions(&path, &dir, CaptionChoice::First).unwrap_err();
    assert!(
        matches!(err, DataError::UnknownImageId { image_id: 9, .. }),
        "{err}"
    );
    let path = write_coco_file(
        &dir,
        r#"{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": "  "}]}"#,
    );
    assert!(matches!(
        coco_captions(&path, &dir, CaptionChoice::First).unwrap_err(),
        DataError::EmptyCaption { .. }
    ));
    let path = write_coco_file(&dir, "{\"images\": [\n{\"id\": 1,, }]}");
    let err = coco_captions(&path, &dir, CaptionChoice::First).unwrap_err();
    assert!(matches!(err, DataError::Json { line: 2, .. }), "{err}");
    assert!(err.to_string().contains("captions.json"));
    let err = coco_captions(&dir.join("missing.json"), &dir, CaptionChoice::First).unwrap_err();
    assert!(err.to_string().contains("missing.json"));
}

#[test]
fn csv_subset_parses_quoted_captions() {
    let dir = temp("csv");
    let path = dir.join("subset.csv");
    std::fs::write(&path, "index,file_name,caption\n0,a.jpg,\"a dog, a cat\"\n1,b.jpg,\"two\nlines\"\n2,c.jpg,plain\n").unwrap();
    let items = csv_subset(&path, &dir).unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0].caption, "a dog, a cat");
    assert_eq!(items[1].caption, "two\nlines");
    assert_eq!(items[2].path, dir.join("c.jpg"));
}

#[test]
fn csv_errors_name_line_and_field() {
    let dir = temp("csv-bad");
    let path = dir.join("subset.csv");
    std::fs::write(&path, "index,name,caption\n0,a.jpg,x\n").unwrap();
    let err = csv_subset(&path, &dir).unwrap_err();
    assert!(err.to_string().contains("file_name"), "{err}");
    std::fs::write(&path, "index,file_name,caption\n0,a.jpg,x\n1,b.jpg\n").unwrap();
    let err = csv_subset(&path, &dir).unwrap_err();
    assert!(matches!(err, DataError::Csv { line: 3, .. }), "{err}");
    std::fs::write(&path, "index,file_name,caption\n0,a.jpg,\"\"\n").unwrap();
    assert!(matches!(
        csv_subset(&path, &dir).unwrap_err(),
        DataError::EmptyCaption { .. }
    ));
}

#[test]
fn image_folder_pairs_images_with_txt_captions() {
    let dir = temp("folder");
    gradient(8, 8).save(dir.join("b.png")).unwrap();
    gradient(8, 8).save(dir.join("a.png")).unwrap();
    std::fs::write(dir.join("a.txt"), "caption a\n").unwrap();
    std::fs::write(dir.join("b.txt"), "caption b").unwrap();
    let items = image_folder(&dir).unwrap();
    assert_eq!(
        items.iter().map(|i| i.caption.as_str()).collect::<Vec<_>>(),
        ["caption a", "caption b"]
    );
    std::fs::remove_file(dir.join("b.txt")).unwrap();
    let err = image_folder(&dir).unwrap_err();
    assert!(err.to_string().contains("b.txt"), "{err}");
}

#[test]
fn every_image_mode_becomes_rgb() {
    let dir = temp("modes");
    let gray = ImageBuffer::from_fn(6, 4, |x, _| Luma([(x * 40) as u8]));
    gray.save(dir.join("gray.png")).unwrap();
    let gray_alpha = ImageBuffer::from_fn(6, 4, |x, _| LumaA([(x * 40) as u8, 100]));
    gray_alpha.save(dir.join("gray_alpha.png")).unwrap();
    let rgba = ImageBuffer::from_fn(6, 4, |x, _| Rgba([(x * 40) as u8, 10, 20, 0]));
    rgba.save(dir.join("rgba.png")).unwrap();
    let rgb16: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_fn(6, 4, |x, _| Rgb([(x * 10000) as u16, 0, 65535]));
    rgb16.save(dir.join("rgb16.png")).unwrap();
    gradient(6, 4).save(dir.join("photo.jpg")).unwrap();
    for name in [
        "gray.png",
        "gray_alpha.png",
        "rgba.png",
        "rgb16.png",
        "photo.jpg",
    ] {
        let img = load_rgb(&dir.join(name), 1024).unwrap();
        assert_eq!(img.dimensions(), (6, 4), "{name}");
    }
    assert_eq!(
        load_rgb(&dir.join("gray.png"), 1024)
            .unwrap()
            .get_pixel(2, 0)
            .0,
        [80, 80, 80]
    );
    assert_eq!(
        load_rgb(&dir.join("rgba.png"), 1024)
            .unwrap()
            .get_pixel(1, 0)
            .0,
        [40, 10, 20],
        "alpha dropped"
    );
    assert_eq!(
        load_rgb(&dir.join("rgb16.png"), 1024)
            .unwrap()
            .get_pixel(0, 0)
            .0,
        [0, 0, 255]
    );
}

/// CRC-32 (PNG chunk checksum).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn bad_image_files_are_clear_errors() {
    let dir = temp("bad-images");
    let err = load_rgb(&dir.join("missing.jpg"), 1024).unwrap_err();
    assert!(
        matches!(err, DataError::Io { .. }) && err.to_string().contains("missing.jpg"),
        "{err}"
    );

    std::fs::write(dir.join("empty.jpg"), b"").unwrap();
    let err = load_rgb(&dir.join("empty.jpg"), 1024).unwrap_err();
    assert!(
        err.to_string().contains("empty.jpg") && err.to_string().contains("0 bytes"),
        "{err}"
    );

    std::fs::write(dir.join("text.jpg"), b"this is a text file, not a JPEG").unwrap();
    let err = load_rgb(&dir.join("text.jpg"), 1024).unwrap_err();
    assert!(
        matches!(err, DataError::Image { .. }) && err.to_string().contains("text.jpg"),
        "{err}"
    );

    gradient(64, 64).save(dir.join("full.jpg")).unwrap();
    let bytes = std::fs::read(dir.join("full.jpg")).unwrap();
    std::fs::write(dir.join("truncated.jpg"), &bytes[..bytes.len() / 3]).unwrap();
    let err = load_rgb(&dir.join("truncated.jpg"), 1024).unwrap_err();
    assert!(
        matches!(err, DataError::Image { .. }) && err.to_string().contains("truncated.jpg"),
        "{err}"
    );

    // A PNG whose header declares 100000 x 100000 pixels (a decompression bomb).
    gradient(4, 4).save(dir.join("small.png")).unwrap();
    let mut png = std::fs::read(dir.join("small.png")).unwrap();
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(dir.join("bomb.png"), &png).unwrap();
    let err = load_rgb(&dir.join("bomb.png"), 16_384).unwrap_err();
    assert!(
        matches!(err, DataError::Image { .. }) && err.to_string().contains("bomb.png"),
        "{err}"
    );
}

#[test]
fn transform_resizes_crops_flips_and_normalises() {
    assert_eq!(shorter_side_size(640, 480, 256), (341, 256));
    assert_eq!(shorter_side_size(480, 640, 256), (256, 341));
    let img = gradient(40, 20);
    let mut rng = SplitMix64::new(0);
    let out = transform_rgb(&img, &TransformConfig::center(10), &mut rng);
    assert_eq!(out.len(), 3 * 10 * 10);
    assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
    // Blue channel is constant 128 -> 128/255*2-1.
    assert!((out[200] - (128.0 / 255.0 * 2.0 - 1.0)).abs() < 1e-6);
    // Red increases left to right; a flip reverses it.
    assert!(out[9] > out[0]);
    let flip = TransformConfig {
        hflip_probability: 1.0,
        ..TransformConfig::center(10)
    };
    let flipped = transform_rgb(&img, &flip, &mut rng);
    assert_eq!(flipped[0], out[9]);
    let random = TransformConfig {
        crop: Crop::Random,
        ..TransformConfig::center(10)
    };
    let a = transform_rgb(&img, &random, &mut SplitMix64::new(3));
    let b = transform_rgb(&img, &random, &mut SplitMix64::new(3));
    assert_eq!(a, b, "seeded random crop is deterministic");
}

#[test]
fn synthetic_dataset_is_deterministic_and_readable_by_the_coco_loader() {
    let d1 = temp("synthetic-1");
    let d2 = temp("synthetic-2");
    let labels = write_coco(&d1, 12, 32, 5).unwrap();
    write_coco(&d2, 12, 32, 5).unwrap();
    for i in 0..12 {
        let name = format!("images/{i:06}.png");
        assert_eq!(
            std::fs::read(d1.join(&name)).unwrap(),
            std::fs::read(d2.join(&name)).unwrap()
        );
    }
    let items = coco_captions(&d1.join("captions.json"), &d1, CaptionChoice::First).unwrap();
    assert_eq!(items.len(), 12);
    for (item, label) in items.iter().zip(&labels) {
        assert_eq!(item.caption, label.caption());
        assert!(SHAPES.contains(&label.shape.as_str()));
    }
    // The labels are in the annotations file for the benchmark.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d1.join("captions.json")).unwrap()).unwrap();
    assert_eq!(json["images"][0]["shape"], labels[0].shape.as_str());
    // The shape's colour is at its centre.
    let img = image::open(d1.join("images/000000.png")).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (32, 32));
    let centre = cm_data::synthetic::PLACES
        .iter()
        .find(|(n, _)| *n == labels[0].place)
        .unwrap()
        .1;
    let colour = cm_data::synthetic::COLOURS
        .iter()
        .find(|(n, _)| *n == labels[0].colour)
        .unwrap()
        .1;
    let pixel = img.get_pixel((centre[0] * 32.0) as u32, (centre[1] * 32.0) as u32);
    assert_eq!(pixel.0, colour);
}

#[test]
fn dataset_limits_shuffles_and_applies_the_skip_policy() {
    let dir = temp("dataset");
    write_coco(&dir, 6, 16, 1).unwrap();
    std::fs::write(dir.join("images/000002.png"), b"corrupt").unwrap();
    let items = coco_captions(&dir.join("captions.json"), &dir, CaptionChoice::First).unwrap();

    let strict = CaptionDataset::new(
        items.clone(),
        TransformConfig::center(8),
        DatasetOptions::default(),
    )
    .unwrap();
    assert_eq!(strict.len(), 6);
    let err = strict.load_many(&[0, 1, 2, 3]).unwrap_err();
    assert!(err.to_string().contains("000002.png"), "{err}");
    assert!(
        strict.get(2).unwrap().is_err(),
        "the Burn dataset yields the error, no panic"
    );
    assert!(strict.get(6).is_none());

    let options = DatasetOptions {
        skip_bad: true,
        ..Default::default()
    };
    let lenient = CaptionDataset::new(items.clone(), TransformConfig::center(8), options).unwrap();
    let loaded = lenient.load_many(&[0, 1, 2, 3]).unwrap();
    assert_eq!(loaded.len(), 3);
    let skipped = lenient.skipped();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].0.ends_with("000002.png"));

    let options = DatasetOptions {
        max_items: Some(4),
        shuffle_seed: Some(9),
        ..Default::default()
    };
    let a = CaptionDataset::new(items.clone(), TransformConfig::center(8), options).unwrap();
    let b = CaptionDataset::new(items, TransformConfig::center(8), options).unwrap();
    assert_eq!(a.len(), 4);
    assert_eq!(a.items(), b.items());
}

#[test]
fn palette_and_cmyk_files_become_rgb() {
    // Made by scripts/gen_transform_fixtures.py with PIL.
    let images = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/images");
    let palette = load_rgb(&images.join("palette.png"), 1024).unwrap();
    assert_eq!(palette.dimensions(), (8, 6));
    assert_eq!(palette.get_pixel(0, 0).0, [255, 0, 0]);
    assert_eq!(palette.get_pixel(4, 2).0, [0, 255, 0]);
    assert_eq!(palette.get_pixel(7, 5).0, [0, 0, 255]);
    let cmyk = load_rgb(&images.join("cmyk_red.jpg"), 1024).unwrap();
    assert_eq!(cmyk.dimensions(), (8, 6));
    let [r, g, b] = cmyk.get_pixel(3, 3).0;
    assert!(
        r > 200 && g < 60 && b < 60,
        "CMYK red decoded as {:?}",
        [r, g, b]
    );
}
