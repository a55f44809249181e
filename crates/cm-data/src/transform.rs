//! Image decoding and the training transforms: decode (with decompression-bomb limits), convert
//! any mode to RGB, resize the shorter side to `R` with antialiasing, center or random crop to
//! `R x R`, optional horizontal flip, and `[C, H, W]` f32 in [-1, 1].
//!
//! The default path equals torchvision's `Resize(R) + CenterCrop(R) + ToTensor() + Normalize(0.5,
//! 0.5)` on a PIL image: the resize reproduces PIL's bilinear resampling with antialiasing
//! (`ImagingResample`: a triangle filter widened by the down-scaling factor, horizontal pass then
//! vertical pass, 8-bit rounding between passes), the crop offsets are torchvision's.

use std::path::Path;

use image::{ImageReader, Limits, RgbImage};

use crate::error::{DataError, Result};
use crate::item::SplitMix64;

/// Largest width or height accepted before decoding (decompression-bomb guard).
pub const DEFAULT_MAX_SIDE: u32 = 16_384;
/// Largest decoded buffer accepted, in bytes.
pub const DEFAULT_MAX_ALLOC: u64 = 512 * 1024 * 1024;

/// How to crop after resizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crop {
    /// torchvision `CenterCrop`.
    Center,
    /// A uniformly random `R x R` window.
    Random,
}

/// The transform of one training image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransformConfig {
    /// Output side `R` (the shorter side is resized to it, then an `R x R` crop).
    pub resolution: u32,
    /// Crop kind.
    pub crop: Crop,
    /// Probability of a horizontal flip.
    pub hflip_probability: f64,
    /// Decoding limit on width and height.
    pub max_side: u32,
}

impl TransformConfig {
    /// Center crop, no flip, the default limits.
    pub fn center(resolution: u32) -> Self {
        Self {
            resolution,
            crop: Crop::Center,
            hflip_probability: 0.0,
            max_side: DEFAULT_MAX_SIDE,
        }
    }
}

/// Decodes an image file to RGB (grayscale, palette, CMYK, 16-bit and alpha images are
/// converted; alpha is dropped like PIL's `convert("RGB")`). Refuses images larger than
/// `max_side` before allocating them.
pub fn load_rgb(path: &Path, max_side: u32) -> Result<RgbImage> {
    let bad = |message: String| DataError::Image {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.len() == 0 {
        return Err(bad("the file is empty (0 bytes)".into()));
    }
    let mut reader = ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    if reader.format().is_none() {
        return Err(bad(
            "not a recognised image format (checked the file's magic bytes)".into(),
        ));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(DEFAULT_MAX_ALLOC);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| bad(e.to_string()))?;
    Ok(image.to_rgb8())
}

/// PIL's resampling coefficients for one axis: per output pixel, the first input index and the
/// normalised triangle-filter weights.
fn coefficients(in_size: u32, out_size: u32) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // bilinear support 1.0, widened when down-scaling
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5).floor().max(0.0)) as usize;
            let xmax = ((center + support + 0.5).floor() as usize).min(in_size as usize);
            let mut weights: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let d = ((x as f64 - center + 0.5) / filter_scale).abs();
                    if d < 1.0 {
                        1.0 - d
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            (xmin, weights)
        })
        .collect()
}

fn clip8(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// One separable pass over raw interleaved RGB rows: `out[o] = sum_k w_k in[start + k]` along
/// an axis, rounded to 8 bits (PIL rounds between its two passes too).
fn resample_axis(
    input: &[u8],
    (in_w, in_h): (usize, usize),
    coeffs: &[(usize, Vec<f64>)],
    horizontal: bool,
) -> Vec<u8> {
    let (out_w, out_h) = if horizontal {
        (coeffs.len(), in_h)
    } else {
        (in_w, coeffs.len())
    };
    let mut out = vec![0u8; out_w * out_h * 3];
    for y in 0..out_h {
        for x in 0..out_w {
            let (start, weights) = if horizontal { &coeffs[x] } else { &coeffs[y] };
            let mut acc = [0.0f64; 3];
            for (k, &w) in weights.iter().enumerate() {
                let (sx, sy) = if horizontal {
                    (start + k, y)
                } else {
                    (x, start + k)
                };
                let p = &input[(sy * in_w + sx) * 3..][..3];
                acc[0] += p[0] as f64 * w;
                acc[1] += p[1] as f64 * w;
                acc[2] += p[2] as f64 * w;
            }
            let o = &mut out[(y * out_w + x) * 3..][..3];
            o[0] = clip8(acc[0]);
            o[1] = clip8(acc[1]);
            o[2] = clip8(acc[2]);
        }
    }
    out
}

/// Bilinear resize with antialiasing, as PIL's `Image.resize(size, BILINEAR)`.
pub fn resize_bilinear_antialias(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    // 1. Horizontal pass (to width x h), then 2. vertical pass, each rounded to 8 bits.
    let mut buffer = img.as_raw().clone();
    let mut current_w = w;
    if width as usize != w {
        buffer = resample_axis(&buffer, (w, h), &coefficients(w as u32, width), true);
        current_w = width as usize;
    }
    if height as usize != h {
        buffer = resample_axis(
            &buffer,
            (current_w, h),
            &coefficients(h as u32, height),
            false,
        );
    }
    RgbImage::from_raw(width, height, buffer).expect("buffer matches the output size")
}

/// torchvision `Resize(r)` output size: the shorter side becomes `r`, the longer
/// `int(r * long / short)`.
pub fn shorter_side_size(width: u32, height: u32, r: u32) -> (u32, u32) {
    if width <= height {
        (r, (r as u64 * height as u64 / width as u64) as u32)
    } else {
        ((r as u64 * width as u64 / height as u64) as u32, r)
    }
}

/// Applies the transform to a decoded image; returns `[3, R, R]` values in [-1, 1], row-major.
pub fn transform_rgb(img: &RgbImage, config: &TransformConfig, rng: &mut SplitMix64) -> Vec<f32> {
    let r = config.resolution;
    // 1. Resize the shorter side to R.
    let (w, h) = img.dimensions();
    let (rw, rh) = shorter_side_size(w, h, r);
    let resized = if (rw, rh) == (w, h) {
        img.clone()
    } else {
        resize_bilinear_antialias(img, rw, rh)
    };
    // 2. Crop R x R (torchvision CenterCrop rounds the offsets).
    let (top, left) = match config.crop {
        Crop::Center => (
            ((rh - r) as f64 / 2.0).round_ties_even() as u32,
            ((rw - r) as f64 / 2.0).round_ties_even() as u32,
        ),
        Crop::Random => (
            rng.below((rh - r + 1) as usize) as u32,
            rng.below((rw - r + 1) as usize) as u32,
        ),
    };
    // 3. Optional horizontal flip.
    let flip = config.hflip_probability > 0.0 && rng.unit() < config.hflip_probability;
    // 4. CHW in [-1, 1]: (x / 255 - 0.5) / 0.5.
    let mut out = vec![0.0f32; (3 * r * r) as usize];
    for y in 0..r {
        for x in 0..r {
            let sx = if flip { r - 1 - x } else { x };
            let p = resized.get_pixel(left + sx, top + y);
            for c in 0..3 {
                out[(c as u32 * r * r + y * r + x) as usize] = (p[c] as f32 / 255.0 - 0.5) / 0.5;
            }
        }
    }
    out
}

/// Decodes and transforms an image file.
pub fn load_and_transform(
    path: &Path,
    config: &TransformConfig,
    rng: &mut SplitMix64,
) -> Result<Vec<f32>> {
    let img = load_rgb(path, config.max_side)?;
    let (w, h) = img.dimensions();
    if w.min(h) == 0 {
        return Err(DataError::Image {
            path: path.to_path_buf(),
            message: format!("image has size {w}x{h}"),
        });
    }
    Ok(transform_rgb(&img, config, rng))
}
