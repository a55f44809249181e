//! The three caption sources, each producing a list of [`CaptionedImage`]:
//! - COCO captions: an annotations file in the official layout (`images[{id, file_name}]`,
//!   `annotations[{image_id, caption}]`, e.g. `captions_train2014.json`) plus an image folder;
//! - the course's subset layout: an image folder plus a CSV with a header row and columns
//!   `index, file_name, caption` (RFC 4180 quoting: commas and newlines inside captions);
//! - a folder of images with same-stem `.txt` captions.
//!
//! Bad input is an error naming the file and the line / field / id; nothing is skipped here
//! (skipping unreadable *images* is the dataset's `skip_bad` option).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{DataError, Result};
use crate::item::{CaptionedImage, SplitMix64};

/// Which caption of an image a COCO source yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptionChoice {
    /// One item per image, its first caption.
    First,
    /// One item per image, a caption drawn with this seed.
    Random {
        /// The seed.
        seed: u64,
    },
    /// One item per caption.
    All,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    image_id: u64,
    caption: String,
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
}

/// Reads a COCO captions annotations file; image paths are `image_dir/file_name`.
pub fn coco_captions(
    annotations: &Path,
    image_dir: &Path,
    choice: CaptionChoice,
) -> Result<Vec<CaptionedImage>> {
    let text = std::fs::read_to_string(annotations).map_err(|e| DataError::io(annotations, e))?;
    let file: CocoFile = serde_json::from_str(&text).map_err(|e| DataError::Json {
        path: annotations.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let names: BTreeMap<u64, &str> = file
        .images
        .iter()
        .map(|i| (i.id, i.file_name.as_str()))
        .collect();
    // Captions per image, in annotation order.
    let mut captions: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for (index, annotation) in file.annotations.iter().enumerate() {
        if !names.contains_key(&annotation.image_id) {
            return Err(DataError::UnknownImageId {
                path: annotations.to_path_buf(),
                index,
                image_id: annotation.image_id,
            });
        }
        if annotation.caption.trim().is_empty() {
            return Err(DataError::EmptyCaption {
                source_name: annotations.display().to_string(),
                item: format!("annotation {index} (image_id {})", annotation.image_id),
            });
        }
        captions
            .entry(annotation.image_id)
            .or_default()
            .push(annotation.caption.trim());
    }
    let mut rng = match choice {
        CaptionChoice::Random { seed } => Some(SplitMix64::new(seed)),
        _ => None,
    };
    let mut items = Vec::new();
    for image in &file.images {
        let Some(list) = captions.get(&image.id) else {
            continue;
        };
        let path = image_dir.join(&image.file_name);
        match choice {
            CaptionChoice::First => items.push(CaptionedImage {
                path,
                caption: list[0].to_string(),
            }),
            CaptionChoice::Random { .. } => {
                let pick = rng.as_mut().expect("seeded").below(list.len());
                items.push(CaptionedImage {
                    path,
                    caption: list[pick].to_string(),
                });
            }
            CaptionChoice::All => items.extend(list.iter().map(|c| CaptionedImage {
                path: path.clone(),
                caption: c.to_string(),
            })),
        }
    }
    Ok(items)
}

/// Reads the course's subset layout: a CSV `index,file_name,caption` (header row required) and
/// the folder its file names are relative to.
pub fn csv_subset(csv_path: &Path, image_dir: &Path) -> Result<Vec<CaptionedImage>> {
    let file = std::fs::File::open(csv_path).map_err(|e| DataError::io(csv_path, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(file);
    let csv_error = |line: u64, message: String| DataError::Csv {
        path: csv_path.to_path_buf(),
        line,
        message,
    };
    let headers = reader
        .headers()
        .map_err(|e| csv_error(1, e.to_string()))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                csv_error(
                    1,
                    format!(
                        "header has no `{name}` column (found: {:?})",
                        headers.iter().collect::<Vec<_>>()
                    ),
                )
            })
    };
    let (file_col, caption_col) = (column("file_name")?, column("caption")?);
    let mut items = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            csv_error(line, e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let file_name = record.get(file_col).unwrap_or("").trim();
        if file_name.is_empty() {
            return Err(csv_error(line, "field `file_name` is empty".into()));
        }
        let caption = record.get(caption_col).unwrap_or("").trim();
        if caption.is_empty() {
            return Err(DataError::EmptyCaption {
                source_name: format!("{}:{line}", csv_path.display()),
                item: file_name.to_string(),
            });
        }
        items.push(CaptionedImage {
            path: image_dir.join(file_name),
            caption: caption.to_string(),
        });
    }
    Ok(items)
}

/// Image extensions a folder source picks up.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp"];

/// Reads a folder of images with same-stem `.txt` captions (`cat.jpg` + `cat.txt`), sorted by
/// name. An image without a caption file, or with an empty one, is an error naming it.
pub fn image_folder(dir: &Path) -> Result<Vec<CaptionedImage>> {
    let mut images: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    images.sort();
    images
        .into_iter()
        .map(|path| {
            let caption_path = path.with_extension("txt");
            let caption = std::fs::read_to_string(&caption_path)
                .map_err(|e| DataError::io(&caption_path, e))?;
            let caption = caption.trim();
            if caption.is_empty() {
                return Err(DataError::EmptyCaption {
                    source_name: caption_path.display().to_string(),
                    item: path.display().to_string(),
                });
            }
            Ok(CaptionedImage {
                caption: caption.to_string(),
                path,
            })
        })
        .collect()
}
