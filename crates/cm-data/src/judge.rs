//! An analytic judge of the captioned-shapes images: it reads the shape, colour, size and place
//! of the one shape in an image from its pixels, so that generated images can be scored against
//! their prompts (the [demo] quality benchmark) without a learned model.
//!
//! 1. Background: the median colour of the border pixels.
//! 2. Foreground: pixels farther than [`FOREGROUND_DISTANCE`] from the background (RGB distance);
//!    none -> the image has no shape.
//! 3. Colour: the mean of the clearly-foreground pixels, nearest palette colour.
//! 4. Place: the foreground centroid, nearest of the five place centres.
//! 5. Size: the larger side of the foreground bounding box over the image side, nearest of the two
//!    extents.
//! 6. Shape: the fill ratio area / bounding-box area: a square fills its box (1.0), a circle
//!    pi/4 (0.79), the apex-up triangle 1/2; and the triangle's rows widen downwards.
//!
//! The judge is tested on the data set's own renderings (>= 99% of images fully right at 32 px;
//! `tests/judge.rs` measures it) and is never tuned on generated images.

use image::RgbImage;

use crate::synthetic::{ShapeLabel, COLOURS, PLACES, SIZES};

/// RGB distance from the background above which a pixel is foreground.
pub const FOREGROUND_DISTANCE: f64 = 60.0;

/// The background colour of an image: the per-channel median of its border pixels (0-255; an
/// empty image gives black).
pub fn background(image: &RgbImage) -> [f64; 3] {
    let (w, h) = image.dimensions();
    let mut border: Vec<[u8; 3]> = Vec::new();
    for x in 0..w {
        border.push(image.get_pixel(x, 0).0);
        border.push(image.get_pixel(x, h.saturating_sub(1)).0);
    }
    for y in 1..h.saturating_sub(1) {
        border.push(image.get_pixel(0, y).0);
        border.push(image.get_pixel(w.saturating_sub(1), y).0);
    }
    let median = |c: usize| {
        let mut v: Vec<u8> = border.iter().map(|p| p[c]).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0) as f64
    };
    [median(0), median(1), median(2)]
}

/// What the judge read from an image (`None`: nothing that looks like a shape).
pub fn judge(image: &RgbImage) -> Option<ShapeLabel> {
    let (w, h) = image.dimensions();
    if w < 4 || h < 4 {
        return None;
    }
    // 1. Background: the per-channel median of the border.
    let background = background(image);
    let distance = |p: [u8; 3]| {
        (0..3)
            .map(|c| (p[c] as f64 - background[c]).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    // 2. Foreground statistics.
    let (mut count, mut sx, mut sy) = (0usize, 0.0, 0.0);
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0u32, 0u32);
    let mut far = 0.0f64;
    for (x, y, p) in image.enumerate_pixels() {
        let d = distance(p.0);
        far = far.max(d);
        if d > FOREGROUND_DISTANCE {
            count += 1;
            sx += x as f64 + 0.5;
            sy += y as f64 + 0.5;
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    if count < 3 {
        return None;
    }
    // 3. Colour of the clearly-foreground pixels.
    let core = (0.7 * far).max(FOREGROUND_DISTANCE);
    let mut mean = [0.0f64; 3];
    let mut n = 0.0f64;
    for p in image.pixels() {
        if distance(p.0) >= core {
            for (m, v) in mean.iter_mut().zip(p.0) {
                *m += v as f64;
            }
            n += 1.0;
        }
    }
    let mean = mean.map(|v| v / n.max(1.0));
    let colour = COLOURS
        .iter()
        .min_by(|a, b| {
            let da: f64 = (0..3).map(|c| (a.1[c] as f64 - mean[c]).powi(2)).sum();
            let db: f64 = (0..3).map(|c| (b.1[c] as f64 - mean[c]).powi(2)).sum();
            da.total_cmp(&db)
        })
        .map(|c| c.0)?;
    // 4. Place from the centroid.
    let (cx, cy) = (sx / count as f64 / w as f64, sy / count as f64 / h as f64);
    let place = PLACES
        .iter()
        .min_by(|a, b| {
            let da = (a.1[0] - cx).powi(2) + (a.1[1] - cy).powi(2);
            let db = (b.1[0] - cx).powi(2) + (b.1[1] - cy).powi(2);
            da.total_cmp(&db)
        })
        .map(|p| p.0)?;
    // 5. Size from the bounding box.
    let (bw, bh) = ((x1 - x0 + 1) as f64, (y1 - y0 + 1) as f64);
    let extent = bw.max(bh) / w.max(h) as f64;
    let size = SIZES
        .iter()
        .min_by(|a, b| (a.1 - extent).abs().total_cmp(&(b.1 - extent).abs()))
        .map(|s| s.0)?;
    // 6. Shape from the fill ratio (and, for the triangle, rows that widen downwards).
    let fill = count as f64 / (bw * bh);
    let row_width = |y: u32| {
        (x0..=x1)
            .filter(|&x| distance(image.get_pixel(x, y).0) > FOREGROUND_DISTANCE)
            .count() as f64
    };
    let top = row_width(y0 + ((y1 - y0) as f64 * 0.25) as u32);
    let bottom = row_width(y0 + ((y1 - y0) as f64 * 0.75) as u32);
    let widening = bottom > 1.6 * top.max(0.5);
    let shape = if fill > 0.9 {
        "square"
    } else if fill < 0.64 || (widening && fill < 0.72) {
        "triangle"
    } else {
        "circle"
    };
    Some(ShapeLabel {
        shape: shape.into(),
        colour: colour.into(),
        size: size.into(),
        place: place.into(),
    })
}

/// Per-attribute and whole-prompt accuracy of a set of judgements against their labels.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Accuracy {
    /// Images judged.
    pub images: usize,
    /// Fraction with every attribute right.
    pub all: f64,
    /// Fraction with the right shape.
    pub shape: f64,
    /// Fraction with the right colour.
    pub colour: f64,
    /// Fraction with the right size.
    pub size: f64,
    /// Fraction with the right place.
    pub place: f64,
}

impl Accuracy {
    /// Scores `images` against `labels` (same order).
    pub fn of(images: &[RgbImage], labels: &[ShapeLabel]) -> Self {
        let n = images.len().min(labels.len());
        let mut hits = [0usize; 5];
        for (image, label) in images.iter().zip(labels) {
            let Some(read) = judge(image) else { continue };
            let right = [
                read.shape == label.shape,
                read.colour == label.colour,
                read.size == label.size,
                read.place == label.place,
            ];
            for (h, r) in hits.iter_mut().zip(right) {
                *h += r as usize;
            }
            hits[4] += right.iter().all(|&r| r) as usize;
        }
        let f = |h: usize| h as f64 / n.max(1) as f64;
        Self {
            images: n,
            all: f(hits[4]),
            shape: f(hits[0]),
            colour: f(hits[1]),
            size: f(hits[2]),
            place: f(hits[3]),
        }
    }
}
