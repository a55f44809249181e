//! Turning image tensors into PNG files (a grid when the batch has several images).

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::error::{ModelError, Result};
use crate::safetensors_io::write_atomically;

/// Converts `[batch, 3, H, W]` images in [0, 1] to 8-bit RGB images (rounding as diffusers'
/// `numpy_to_pil`: `(x * 255).round()`).
pub fn to_rgb8<B: Backend>(images: Tensor<B, 4>) -> Result<Vec<image::RgbImage>> {
    let [batch, channels, height, width] = images.dims();
    if channels != 3 {
        return Err(ModelError::InvalidInput(format!(
            "expected 3-channel images, got {channels}"
        )));
    }
    let data = images
        .permute([0, 2, 3, 1])
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| ModelError::InvalidInput(format!("image tensor: {e:?}")))?;
    let per_image = height * width * 3;
    Ok((0..batch)
        .map(|b| {
            let pixels = data[b * per_image..(b + 1) * per_image]
                .iter()
                .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect();
            image::RgbImage::from_raw(width as u32, height as u32, pixels)
                .expect("buffer size matches")
        })
        .collect())
}

/// Lays images out in a grid of `columns` (all images must have the same size).
pub fn grid(images: &[image::RgbImage], columns: usize) -> image::RgbImage {
    let (w, h) = images.first().map(|i| i.dimensions()).unwrap_or((0, 0));
    let columns = columns.clamp(1, images.len().max(1));
    let rows = images.len().div_ceil(columns);
    let mut out = image::RgbImage::new(w * columns as u32, h * rows as u32);
    for (i, img) in images.iter().enumerate() {
        let (x, y) = ((i % columns) as u32 * w, (i / columns) as u32 * h);
        image::imageops::replace(&mut out, img, x as i64, y as i64);
    }
    out
}

/// Writes `[batch, 3, H, W]` images in [0, 1] as one PNG (a near-square grid for batch > 1),
/// atomically.
pub fn save_png<B: Backend>(images: Tensor<B, 4>, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let images = to_rgb8(images)?;
    let columns = (images.len() as f64).sqrt().ceil() as usize;
    let picture = grid(&images, columns);
    let mut bytes = Vec::new();
    picture
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| {
            ModelError::InvalidInput(format!("cannot encode PNG for {}: {e}", path.display()))
        })?;
    write_atomically(path, &bytes)
}
