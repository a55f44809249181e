//! Image tensors in `[0, 1]` to 8-bit RGB, grids, and image files whose format follows the
//! extension (`.png`, `.jpg` / `.jpeg`; anything else is refused rather than mislabelled).

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::atomic::write_atomically;
use crate::error::{IoError, Result};

/// Converts `[batch, 3, H, W]` images in [0, 1] to 8-bit RGB images (rounding as diffusers'
/// `numpy_to_pil`: `(x * 255).round()`; values outside [0, 1] are clamped).
pub fn to_rgb8<B: Backend>(images: Tensor<B, 4>) -> Result<Vec<image::RgbImage>> {
    let [batch, channels, height, width] = images.dims();
    if channels != 3 {
        return Err(IoError::InvalidInput(format!(
            "expected 3-channel images, got {channels}"
        )));
    }
    let data = images
        .permute([0, 2, 3, 1])
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| IoError::InvalidInput(format!("image tensor: {e:?}")))?;
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

/// The image format an output path asks for, from its extension (none, as in `/dev/stdout`: PNG).
pub fn format_for(path: &Path) -> Result<image::ImageFormat> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("png") | None => Ok(image::ImageFormat::Png),
        Some("jpg") | Some("jpeg") => Ok(image::ImageFormat::Jpeg),
        other => Err(IoError::InvalidInput(format!(
            "{}: unsupported image extension {}; use .png or .jpg",
            path.display(),
            other.map_or(String::new(), |e| format!(".{e}"))
        ))),
    }
}

/// Encodes an RGB image in the format of `path`'s extension and writes it atomically.
pub fn save_rgb(picture: &image::RgbImage, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let format = format_for(path)?;
    let mut bytes = Vec::new();
    let encoded = match format {
        image::ImageFormat::Jpeg => {
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95);
            picture.write_with_encoder(encoder)
        }
        _ => picture.write_to(&mut std::io::Cursor::new(&mut bytes), format),
    };
    encoded.map_err(|e| IoError::InvalidInput(format!("cannot encode {}: {e}", path.display())))?;
    write_atomically(path, &bytes)
}

/// Writes `[batch, 3, H, W]` images in [0, 1] as one image file (a near-square grid for
/// batch > 1) in the format of the extension, atomically.
pub fn save_images<B: Backend>(images: Tensor<B, 4>, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    format_for(path)?;
    let images = to_rgb8(images)?;
    let columns = (images.len() as f64).sqrt().ceil() as usize;
    save_rgb(&grid(&images, columns), path)
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn_flex::Flex;

    #[test]
    fn the_extension_picks_the_format_and_unknown_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("cm-io-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let images = Tensor::<B, 4>::ones([1, 3, 8, 8], &Default::default()) * 0.5;
        save_images(images.clone(), dir.join("a.jpg")).unwrap();
        let bytes = std::fs::read(dir.join("a.jpg")).unwrap();
        assert_eq!(&bytes[..2], &[0xFF, 0xD8], "JPEG magic");
        save_images(images.clone(), dir.join("a.PNG")).unwrap();
        let bytes = std::fs::read(dir.join("a.PNG")).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let err = save_images(images, dir.join("a.webp"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(".webp") && err.contains(".png"), "{err}");
    }
}
