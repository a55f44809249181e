//! A Gaussian mixture with class labels, and its EXACT denoiser under a VP noise schedule.
//!
//! Data: `x0 ~ sum_k pi_k N(mu_k, tau_k^2 I)`; component `k` belongs to class `class_k`. Under
//! `x_t = alpha x0 + sigma eps`, component `k` gives `x_t ~ N(alpha mu_k, v_k I)` with
//! `v_k = alpha^2 tau_k^2 + sigma^2`, so (exactly)
//!
//! ```text
//! r_k(x_t)       ∝ pi_k N(x_t; alpha mu_k, v_k I)                       (posterior of k)
//! E[x0 | x_t, k] = mu_k + (alpha tau_k^2 / v_k) (x_t - alpha mu_k)
//! E[x0 | x_t]    = sum_k r_k E[x0 | x_t, k]
//! eps_hat        = (x_t - alpha E[x0 | x_t]) / sigma
//! ```
//!
//! Conditioning on class `c` restricts the sum to the components of `c` (the class-conditional
//! posterior). The condition is a one-hot `[batch, classes]`; an all-zero row is the
//! unconditional case (every component). As a [`Denoiser`] this is the teacher of the oracle test:
//! classifier-free guidance on top of it (`u + w (c - u)`) is done by the engine, as for SD.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cm_schedulers::config::PredictionType;
use cm_schedulers::schedule::NoiseSchedule;
use rand::RngExt;

use crate::denoiser::{per_example, Denoiser};
use crate::draws::{generator, normals};
use crate::error::{Result, TrainError};

/// A labelled Gaussian mixture in `dim` dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianMixture {
    /// Component means `mu_k`.
    pub means: Vec<Vec<f64>>,
    /// Component standard deviations `tau_k` (isotropic).
    pub stds: Vec<f64>,
    /// Mixture weights `pi_k` (sum to 1).
    pub weights: Vec<f64>,
    /// The class of each component.
    pub classes: Vec<usize>,
    /// Number of classes.
    pub num_classes: usize,
}

impl GaussianMixture {
    /// The oracle's default: 6 components on the unit circle (std 0.1, equal weights), 3 classes
    /// of two opposite-ish components each, so that the class-conditional and unconditional ODE
    /// maps differ and guidance matters.
    pub fn ring() -> Self {
        let k = 6;
        let means = (0..k)
            .map(|i| {
                let angle = std::f64::consts::TAU * i as f64 / k as f64 + 0.3;
                vec![angle.cos(), angle.sin()]
            })
            .collect();
        Self {
            means,
            stds: vec![0.1; k],
            weights: vec![1.0 / k as f64; k],
            classes: (0..k).map(|i| i % 3).collect(),
            num_classes: 3,
        }
    }

    /// Dimension of the data.
    pub fn dim(&self) -> usize {
        self.means[0].len()
    }

    /// `n` samples with their class labels, drawn with `seed`: `([n * dim] values, labels)`.
    pub fn sample(&self, n: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut rng = generator(seed, &[0x0_5A_4D_1E]);
        let all: Vec<usize> = (0..self.means.len()).collect();
        let mut values = Vec::with_capacity(n * self.dim());
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let u: f64 = rng.random();
            let k = self.pick(&all, u);
            self.draw_point(k, &mut rng, &mut values);
            labels.push(self.classes[k]);
        }
        (values, labels)
    }

    /// One sample per label, each from the components of its class (class-conditional data),
    /// drawn with `seed`: `[labels.len() * dim]` values.
    pub fn sample_classes(&self, labels: &[usize], seed: u64) -> Vec<f32> {
        let mut rng = generator(seed, &[0xC1A55]);
        let mut values = Vec::with_capacity(labels.len() * self.dim());
        for &c in labels {
            let members: Vec<usize> = (0..self.means.len())
                .filter(|&k| self.classes[k] == c)
                .collect();
            let total: f64 = members.iter().map(|&k| self.weights[k]).sum();
            let u: f64 = rng.random::<f64>() * total;
            let k = self.pick(&members, u);
            self.draw_point(k, &mut rng, &mut values);
        }
        values
    }

    /// The component of `members` where the running sum of weights first exceeds `u`.
    fn pick(&self, members: &[usize], u: f64) -> usize {
        let mut acc = 0.0;
        members
            .iter()
            .copied()
            .find(|&k| {
                acc += self.weights[k];
                u < acc
            })
            .unwrap_or(*members.last().expect("a component"))
    }

    /// Appends one point of component `k`: `mu_k + tau_k z`.
    fn draw_point(
        &self,
        k: usize,
        rng: &mut rand::rngs::Xoshiro256PlusPlus,
        values: &mut Vec<f32>,
    ) {
        let z = normals(rng, self.dim());
        values.extend(
            self.means[k]
                .iter()
                .zip(&z)
                .map(|(m, z)| (m + self.stds[k] * *z as f64) as f32),
        );
    }

    /// One-hot conditions `[n, classes]` of labels.
    pub fn one_hot<B: Backend>(&self, labels: &[usize], device: &B::Device) -> Tensor<B, 2> {
        let mut values = vec![0f32; labels.len() * self.num_classes];
        for (i, &c) in labels.iter().enumerate() {
            values[i * self.num_classes + c] = 1.0;
        }
        Tensor::from_data(
            TensorData::new(values, [labels.len(), self.num_classes]),
            device,
        )
    }

    /// The exact denoiser on `device`.
    pub fn denoiser<B: Backend>(
        &self,
        schedule: NoiseSchedule,
        device: &B::Device,
    ) -> ExactDenoiser<B> {
        let k = self.means.len();
        let d = self.dim();
        let flat: Vec<f32> = self.means.iter().flatten().map(|&m| m as f32).collect();
        let membership: Vec<f32> = (0..self.num_classes)
            .flat_map(|c| self.classes.iter().map(move |&kc| (kc == c) as u8 as f32))
            .collect();
        ExactDenoiser {
            means: Tensor::from_data(TensorData::new(flat, [k, d]), device),
            mean_sq: self
                .means
                .iter()
                .map(|m| m.iter().map(|v| v * v).sum::<f64>())
                .collect(),
            variances: self.stds.iter().map(|s| s * s).collect(),
            log_weights: self.weights.iter().map(|w| w.ln()).collect(),
            membership: Tensor::from_data(
                TensorData::new(membership, [self.num_classes, k]),
                device,
            ),
            schedule,
            dim: d,
        }
    }
}

/// The exact (class-conditional) denoiser of a [`GaussianMixture`], as an epsilon prediction.
#[derive(Debug, Clone)]
pub struct ExactDenoiser<B: Backend> {
    means: Tensor<B, 2>,
    mean_sq: Vec<f64>,
    variances: Vec<f64>,
    log_weights: Vec<f64>,
    membership: Tensor<B, 2>,
    schedule: NoiseSchedule,
    dim: usize,
}

impl<B: Backend> ExactDenoiser<B> {
    /// `E[x0 | x_t, condition]`.
    ///
    /// # Shapes
    /// `x`: `[n, dim]`, `condition`: `[n, classes]` -> `[n, dim]`.
    pub fn posterior_mean(
        &self,
        x: Tensor<B, 2>,
        t: &[usize],
        condition: Tensor<B, 2>,
    ) -> Result<Tensor<B, 2>> {
        let device = x.device();
        let [n, d] = x.dims();
        let k = self.variances.len();
        // Per (example, component) host coefficients: alpha, v_k, gain_k = alpha tau_k^2 / v_k.
        let mut alpha = Vec::with_capacity(n);
        let mut log_terms = Vec::with_capacity(n * k);
        let mut inv_2v = Vec::with_capacity(n * k);
        let mut gain = Vec::with_capacity(n * k);
        let mut shrink = Vec::with_capacity(n * k);
        for &t in t {
            let ab = self.schedule.alpha_bar(t)? as f64;
            let (a, s2) = (ab.sqrt(), 1.0 - ab);
            alpha.push(a as f32);
            for j in 0..k {
                let v = a * a * self.variances[j] + s2;
                // log pi_k - d/2 log v_k - a^2 |mu_k|^2 / (2 v_k)   (the x-dependent parts follow)
                log_terms.push(
                    (self.log_weights[j]
                        - 0.5 * d as f64 * v.ln()
                        - a * a * self.mean_sq[j] / (2.0 * v)) as f32,
                );
                inv_2v.push((1.0 / (2.0 * v)) as f32);
                gain.push((a * self.variances[j] / v) as f32);
                shrink.push((1.0 - a * a * self.variances[j] / v) as f32);
            }
        }
        let host = |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [n, k]), &device);
        let (log_terms, inv_2v, gain, shrink) =
            (host(log_terms), host(inv_2v), host(gain), host(shrink));
        let alpha: Tensor<B, 2> = per_example(&alpha, &device);
        // -|x - a mu|^2 / (2v) = (-|x|^2 + 2 a x.mu - a^2 |mu|^2) / (2v)
        let x_sq = x.clone().powi_scalar(2).sum_dim(1); // [n, 1]
        let cross = x.clone().matmul(self.means.clone().transpose()) * alpha.clone(); // [n, k]
        let logits = log_terms + (cross * 2.0 - x_sq) * inv_2v;
        // Restrict to the condition's components (all of them for an all-zero row).
        let mask =
            condition.clone().matmul(self.membership.clone()) + (condition.sum_dim(1).neg() + 1.0); // [n, k], 1 = allowed
        let logits = logits.mask_fill(mask.lower_equal_elem(0.5), -1e30);
        let r = softmax(logits, 1); // [n, k]
        let mean_part = (r.clone() * shrink).matmul(self.means.clone()); // [n, d]
        let x_part = x * (r * gain).sum_dim(1);
        if mean_part.dims() != [n, d] {
            return Err(TrainError::Invalid("mixture denoiser shape".into()));
        }
        Ok(mean_part + x_part)
    }
}

impl<B: Backend> Denoiser<B, 2> for ExactDenoiser<B> {
    fn prediction_type(&self) -> PredictionType {
        PredictionType::Epsilon
    }

    fn predict(
        &self,
        x: Tensor<B, 4>,
        t: &[usize],
        condition: Tensor<B, 2>,
        _guidance: Option<&[f32]>,
    ) -> Result<Tensor<B, 4>> {
        let [n, d, h, w] = x.dims();
        if d * h * w != self.dim || t.len() != n {
            return Err(TrainError::Invalid(format!(
                "mixture denoiser expects [n, {}, 1, 1] and n timesteps, got {:?} and {}",
                self.dim,
                x.dims(),
                t.len()
            )));
        }
        let device = x.device();
        let flat = x.reshape([n, d]);
        let x0 = self.posterior_mean(flat.clone(), t, condition)?;
        let mut alpha = Vec::with_capacity(n);
        let mut sigma = Vec::with_capacity(n);
        for &t in t {
            let ab = self.schedule.alpha_bar(t)?;
            alpha.push(ab.sqrt());
            sigma.push((1.0 - ab).sqrt());
        }
        let eps = (flat - x0 * per_example::<B, 2>(&alpha, &device))
            / per_example::<B, 2>(&sigma, &device);
        Ok(eps.reshape([n, d, h, w]))
    }
}
