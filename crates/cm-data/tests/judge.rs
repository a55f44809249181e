//! The analytic judge on the data set's own renderings: it must read (nearly) every image right,
//! or it cannot score generated ones.

use cm_data::item::SplitMix64;
use cm_data::judge::{judge, Accuracy};
use cm_data::synthetic::{label, render, BACKGROUNDS};

fn renderings(
    n: usize,
    side: u32,
    seed: u64,
) -> (Vec<image::RgbImage>, Vec<cm_data::synthetic::ShapeLabel>) {
    let mut rng = SplitMix64::new(seed);
    let labels: Vec<_> = (0..n).map(|_| label(&mut rng)).collect();
    let images = labels
        .iter()
        .map(|l| render(l, side, BACKGROUNDS[rng.below(2)]))
        .collect();
    (images, labels)
}

#[test]
fn the_judge_reads_the_data_sets_own_images() {
    for side in [32u32, 64] {
        let (images, labels) = renderings(1000, side, 11);
        let accuracy = Accuracy::of(&images, &labels);
        println!("{side} px: {accuracy:?}");
        assert!(accuracy.all >= 0.99, "{side} px: {accuracy:?}");
    }
}

#[test]
fn an_empty_image_has_no_shape_and_wrong_attributes_are_counted() {
    let blank = image::RgbImage::from_pixel(32, 32, image::Rgb([40, 40, 40]));
    assert!(judge(&blank).is_none());
    let (images, mut labels) = renderings(10, 32, 3);
    for l in &mut labels {
        l.colour = if l.colour == "red" {
            "blue".into()
        } else {
            "red".into()
        };
    }
    let accuracy = Accuracy::of(&images, &labels);
    assert_eq!(accuracy.colour, 0.0);
    assert_eq!(accuracy.all, 0.0);
}

#[test]
fn captions_of_the_grammar_parse_back_and_other_text_does_not() {
    let mut rng = SplitMix64::new(5);
    for _ in 0..200 {
        let l = label(&mut rng);
        assert_eq!(cm_data::synthetic::ShapeLabel::parse(&l.caption()), Some(l));
    }
    for text in [
        "",
        "a photo of a cat",
        "a large red circle",
        "a huge red circle in the center",
        "a large red circle in the middle",
    ] {
        assert_eq!(
            cm_data::synthetic::ShapeLabel::parse(text),
            None,
            "{text:?}"
        );
    }
}
