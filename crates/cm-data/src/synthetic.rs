//! The synthetic captioned-shapes dataset: deterministic procedural images of one coloured shape
//! on a plain background, with a caption from a fixed grammar and the exact attributes kept as
//! labels (the [demo] quality benchmark judges generated images against them).
//!
//! Caption grammar (every caption is one of these, all words lower case):
//! ```text
//! caption  := "a " size " " colour " " shape " " place
//! size     := "small" | "large"
//! colour   := "red" | "green" | "blue" | "yellow" | "purple" | "orange"
//! shape    := "circle" | "square" | "triangle"
//! place    := "at the top left" | "at the top right" | "at the bottom left"
//!           | "at the bottom right" | "in the center"
//! ```
//! 2 x 6 x 3 x 5 = 180 distinct captions. Backgrounds are dark gray or light gray (not captioned).
//! [`write_coco`] writes the COCO captions layout (`images/`, `captions.json` with the labels as
//! extra fields of each image), so the COCO loader reads it like real data.

use std::path::Path;

use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::item::SplitMix64;

/// Shape kinds.
pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
/// Colour names and their RGB values.
pub const COLOURS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 40, 40]),
    ("green", [40, 180, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [235, 210, 40]),
    ("purple", [140, 60, 190]),
    ("orange", [245, 140, 30]),
];
/// Sizes and the shape's extent as a fraction of the image side.
pub const SIZES: [(&str, f64); 2] = [("small", 0.22), ("large", 0.42)];
/// Places and the shape centre as fractions of the image side.
pub const PLACES: [(&str, [f64; 2]); 5] = [
    ("at the top left", [0.27, 0.27]),
    ("at the top right", [0.73, 0.27]),
    ("at the bottom left", [0.27, 0.73]),
    ("at the bottom right", [0.73, 0.73]),
    ("in the center", [0.5, 0.5]),
];
/// The two background colours (not captioned).
pub const BACKGROUNDS: [[u8; 3]; 2] = [[40, 40, 40], [200, 200, 200]];

/// The attributes of one synthetic image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapeLabel {
    /// One of [`SHAPES`].
    pub shape: String,
    /// One of the names in [`COLOURS`].
    pub colour: String,
    /// One of the names in [`SIZES`].
    pub size: String,
    /// One of the names in [`PLACES`].
    pub place: String,
}

impl ShapeLabel {
    /// The caption of the grammar.
    pub fn caption(&self) -> String {
        format!(
            "a {} {} {} {}",
            self.size, self.colour, self.shape, self.place
        )
    }

    /// The label of a caption of the grammar (`None` for any other text).
    pub fn parse(caption: &str) -> Option<Self> {
        let rest = caption.trim().strip_prefix("a ")?;
        let mut words = rest.splitn(4, ' ');
        let (size, colour, shape, place) =
            (words.next()?, words.next()?, words.next()?, words.next()?);
        let label = Self {
            shape: shape.into(),
            colour: colour.into(),
            size: size.into(),
            place: place.into(),
        };
        let known = SHAPES.contains(&shape)
            && COLOURS.iter().any(|(c, _)| *c == colour)
            && SIZES.iter().any(|(s, _)| *s == size)
            && PLACES.iter().any(|(p, _)| *p == place);
        known.then_some(label)
    }
}

/// Draws label `i` of a seeded sequence.
pub fn label(rng: &mut SplitMix64) -> ShapeLabel {
    ShapeLabel {
        shape: SHAPES[rng.below(SHAPES.len())].into(),
        colour: COLOURS[rng.below(COLOURS.len())].0.into(),
        size: SIZES[rng.below(SIZES.len())].0.into(),
        place: PLACES[rng.below(PLACES.len())].0.into(),
    }
}

fn inside(shape: &str, dx: f64, dy: f64, half: f64) -> bool {
    match shape {
        "circle" => dx * dx + dy * dy <= half * half,
        "square" => dx.abs() <= half && dy.abs() <= half,
        // Upward triangle with its base at +half and apex at -half.
        _ => dy <= half && dy >= -half && dx.abs() <= (dy + half) / 2.0,
    }
}

/// Renders a label at `side x side` pixels (4x4 supersampling for smooth edges).
pub fn render(label: &ShapeLabel, side: u32, background: [u8; 3]) -> RgbImage {
    let colour = COLOURS
        .iter()
        .find(|(n, _)| *n == label.colour)
        .map_or([255, 255, 255], |c| c.1);
    let extent = SIZES
        .iter()
        .find(|(n, _)| *n == label.size)
        .map_or(0.3, |s| s.1);
    let centre = PLACES
        .iter()
        .find(|(n, _)| *n == label.place)
        .map_or([0.5, 0.5], |p| p.1);
    let s = side as f64;
    let (cx, cy, half) = (centre[0] * s, centre[1] * s, extent * s / 2.0);
    RgbImage::from_fn(side, side, |x, y| {
        let mut hits = 0;
        for sy in 0..4 {
            for sx in 0..4 {
                let px = x as f64 + (sx as f64 + 0.5) / 4.0;
                let py = y as f64 + (sy as f64 + 0.5) / 4.0;
                if inside(&label.shape, px - cx, py - cy, half) {
                    hits += 1;
                }
            }
        }
        let a = hits as f64 / 16.0;
        let mix =
            |c: usize| (colour[c] as f64 * a + background[c] as f64 * (1.0 - a)).round() as u8;
        Rgb([mix(0), mix(1), mix(2)])
    })
}

#[derive(Serialize)]
struct CocoImage<'a> {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
    #[serde(flatten)]
    label: &'a ShapeLabel,
}

#[derive(Serialize)]
struct CocoAnnotation {
    id: u64,
    image_id: u64,
    caption: String,
}

/// Writes `count` images of `side` pixels to `dir/images/` and `dir/captions.json` (COCO layout,
/// labels as extra image fields). Same `seed` -> same files. Returns the labels.
pub fn write_coco(dir: &Path, count: usize, side: u32, seed: u64) -> Result<Vec<ShapeLabel>> {
    if side < 8 {
        return Err(DataError::InvalidOption(format!(
            "synthetic images need at least 8 pixels, got {side}"
        )));
    }
    let images_dir = dir.join("images");
    std::fs::create_dir_all(&images_dir).map_err(|e| DataError::io(&images_dir, e))?;
    let mut rng = SplitMix64::new(seed);
    let labels: Vec<ShapeLabel> = (0..count).map(|_| label(&mut rng)).collect();
    let mut images = Vec::with_capacity(count);
    let mut annotations = Vec::with_capacity(count);
    for (i, l) in labels.iter().enumerate() {
        let background = BACKGROUNDS[rng.below(BACKGROUNDS.len())];
        let file_name = format!("{i:06}.png");
        let path = images_dir.join(&file_name);
        render(l, side, background)
            .save(&path)
            .map_err(|e| DataError::Image {
                path: path.clone(),
                message: e.to_string(),
            })?;
        images.push(CocoImage {
            id: i as u64,
            file_name: format!("images/{file_name}"),
            width: side,
            height: side,
            label: l,
        });
        annotations.push(CocoAnnotation {
            id: i as u64,
            image_id: i as u64,
            caption: l.caption(),
        });
    }
    let json = serde_json::json!({
        "info": {"description": "cm-data synthetic captioned shapes", "seed": seed},
        "images": images,
        "annotations": annotations,
    });
    let path = dir.join("captions.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&json).expect("serialisable"),
    )
    .map_err(|e| DataError::io(&path, e))?;
    Ok(labels)
}
