//! What a run shows and leaves behind: a JSON-lines log of every step, a loss-curve PNG, scatter
//! plots of low-dimensional samples (the oracle), and progress lines (step, loss, lr, it/s, ETA).
//!
//! Plots are drawn with `plotters` (bitmap backend); the labels use the DejaVu Sans Mono font
//! embedded from `assets/fonts/` (Bitstream Vera licence), so no system font is needed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Once;

use cm_io::IoError;
use plotters::prelude::*;

use crate::error::{Result, TrainError};
use crate::trainer::StepRecord;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../../assets/fonts/DejaVuSansMono.ttf");
        // Registering an embedded, known-good font cannot fail; ignore the impossible error.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Invalid(format!("cannot draw {}: {e}", path.display()))
}

/// Appends step records to `metrics.jsonl` (one JSON object per line). On resume the lines of
/// steps at or after the resume step are dropped first, so the file equals an uninterrupted run's.
pub struct MetricsLog {
    path: PathBuf,
    records: Vec<StepRecord>,
}

impl MetricsLog {
    /// Opens (or creates) the log, keeping the records of steps before `resume_step`.
    pub fn open(path: impl Into<PathBuf>, resume_step: u64) -> Result<Self> {
        let path = path.into();
        let mut records = Vec::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if let Ok(record) = serde_json::from_str::<StepRecord>(line) {
                    if record.step < resume_step {
                        records.push(record);
                    }
                }
            }
        }
        let mut text = String::new();
        for r in &records {
            text.push_str(&serde_json::to_string(r).expect("serialisable"));
            text.push('\n');
        }
        cm_io::write_atomically(&path, text.as_bytes())?;
        Ok(Self { path, records })
    }

    /// Appends one record.
    pub fn push(&mut self, record: StepRecord) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| IoError::write(&self.path, e))?;
        writeln!(
            file,
            "{}",
            serde_json::to_string(&record).expect("serialisable")
        )
        .map_err(|e| IoError::write(&self.path, e))?;
        self.records.push(record);
        Ok(())
    }

    /// Every record so far.
    pub fn records(&self) -> &[StepRecord] {
        &self.records
    }
}

/// Draws the loss (and its running mean) against the step, log-scaled, as a PNG.
pub fn plot_loss(records: &[StepRecord], title: &str, path: &Path) -> Result<()> {
    register_font();
    if records.is_empty() {
        return Ok(());
    }
    let losses: Vec<(f64, f64)> = records
        .iter()
        .filter(|r| r.loss.is_finite() && r.loss > 0.0)
        .map(|r| (r.step as f64, r.loss))
        .collect();
    if losses.is_empty() {
        return Ok(());
    }
    let window = (losses.len() / 20).max(1);
    let smooth: Vec<(f64, f64)> = losses
        .iter()
        .enumerate()
        .map(|(i, &(s, _))| {
            let from = i.saturating_sub(window - 1);
            let mean = losses[from..=i].iter().map(|p| p.1).sum::<f64>() / (i + 1 - from) as f64;
            (s, mean)
        })
        .collect();
    let (lo, hi) = losses.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let last = losses.last().map_or(1.0, |p| p.0).max(1.0);
    draw_png(path, (800, 500), |root| {
        root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..last, (lo * 0.9..hi * 1.1).log_scale())
            .map_err(|e| plot_error(path, e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()
            .map_err(|e| plot_error(path, e))?;
        chart
            .draw_series(LineSeries::new(
                losses.iter().copied(),
                RGBColor(160, 190, 230),
            ))
            .map_err(|e| plot_error(path, e))?
            .label("loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(160, 190, 230)));
        chart
            .draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))
            .map_err(|e| plot_error(path, e))?
            .label(format!("running mean ({window} steps)"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_error(path, e))?;
        Ok(())
    })
}

/// Draws into an RGB buffer with `plotters` and writes it as a PNG (atomically).
fn draw_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    let mut buffer = vec![255u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        draw(&root)?;
        root.present().map_err(|e| plot_error(path, e))?;
    }
    let image = image::RgbImage::from_raw(size.0, size.1, buffer).expect("buffer matches the size");
    cm_io::images::save_rgb(&image, path)?;
    Ok(())
}

/// One panel of a scatter figure: a title and 2-D points with a colour index each.
pub struct ScatterPanel<'a> {
    /// Panel title.
    pub title: String,
    /// `[n * 2]` coordinates.
    pub points: &'a [f32],
    /// Colour index of each point (its class).
    pub colours: &'a [usize],
}

/// Side-by-side scatter plots of 2-D point sets (the oracle's samples), as one PNG.
pub fn plot_scatter(panels: &[ScatterPanel], extent: f64, path: &Path) -> Result<()> {
    register_font();
    let palette = [
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
    ];
    let size = 320u32;
    draw_png(path, (size * panels.len() as u32, size + 30), |root| {
        root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
        let areas = root.split_evenly((1, panels.len()));
        for (area, panel) in areas.iter().zip(panels) {
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 15))
                .margin(8)
                .build_cartesian_2d(-extent..extent, -extent..extent)
                .map_err(|e| plot_error(path, e))?;
            chart
                .configure_mesh()
                .disable_mesh()
                .draw()
                .map_err(|e| plot_error(path, e))?;
            chart
                .draw_series(panel.points.chunks(2).zip(panel.colours).map(|(p, &c)| {
                    Circle::new(
                        (p[0] as f64, p[1] as f64),
                        1,
                        palette[c % palette.len()].mix(0.6).filled(),
                    )
                }))
                .map_err(|e| plot_error(path, e))?;
        }
        Ok(())
    })
}

/// Progress on the terminal: one line per `every` steps (and the last), with the loss, the
/// learning rate, it/s and the ETA. Lines are plain text so they read the same in a log file.
pub struct Progress {
    total: u64,
    every: u64,
    start: std::time::Instant,
    first_step: u64,
    label: String,
}

impl Progress {
    /// Progress of steps `first_step..total`.
    pub fn new(label: impl Into<String>, first_step: u64, total: u64, every: u64) -> Self {
        Self {
            total,
            every: every.max(1),
            start: std::time::Instant::now(),
            first_step,
            label: label.into(),
        }
    }

    /// The line for a finished step, or `None` between reporting steps.
    pub fn line(&self, record: &StepRecord) -> Option<String> {
        let done = record.step + 1;
        if !done.is_multiple_of(self.every) && done != self.total {
            return None;
        }
        let elapsed = self.start.elapsed().as_secs_f64();
        let steps = (done - self.first_step) as f64;
        let rate = steps / elapsed.max(1e-9);
        let eta = (self.total - done) as f64 / rate.max(1e-9);
        Some(format!(
            "{} step {done}/{}  loss {:.5}  lr {:.2e}  grad-norm {:.3}  {:.2} it/s  ETA {}",
            self.label,
            self.total,
            record.loss,
            record.lr,
            record.grad_norm,
            rate,
            format_duration(eta)
        ))
    }
}

/// `1h02m`, `3m05s` or `12s`.
pub fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_curve_and_scatter_are_pngs_and_the_log_resumes() {
        let dir = std::env::temp_dir().join(format!("cm-train-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log_path = dir.join("metrics.jsonl");
        let mut log = MetricsLog::open(&log_path, 0).unwrap();
        for step in 0..10 {
            log.push(StepRecord {
                step,
                loss: 1.0 / (step + 1) as f64,
                lr: 1e-4,
                grad_norm: 0.5,
                seconds: 0.1,
            })
            .unwrap();
        }
        plot_loss(log.records(), "test", &dir.join("loss.png")).unwrap();
        let png = std::fs::read(dir.join("loss.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        // Resuming at step 6 keeps steps 0..6 only.
        let log = MetricsLog::open(&log_path, 6).unwrap();
        assert_eq!(log.records().len(), 6);
        assert_eq!(
            std::fs::read_to_string(&log_path).unwrap().lines().count(),
            6
        );
        let points = [0.1f32, 0.2, -0.5, 0.4];
        plot_scatter(
            &[ScatterPanel {
                title: "a".into(),
                points: &points,
                colours: &[0, 1],
            }],
            1.5,
            &dir.join("scatter.png"),
        )
        .unwrap();
        assert!(std::fs::metadata(dir.join("scatter.png")).unwrap().len() > 100);
        let p = Progress::new("cd", 0, 10, 5);
        assert!(p.line(&log.records()[3]).is_none());
        assert!(p.line(&log.records()[4]).unwrap().contains("step 5/10"));
    }
}
