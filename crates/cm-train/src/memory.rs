//! A request's memory, estimated before anything is allocated, so that a huge `--height`, `--batch`
//! or `sample_size` is refused with a message instead of aborting on a failed allocation.
//!
//! The estimate is a deliberately generous upper bound of the peak during sampling (fp32):
//! - the UNet at each level: a few live activations of `channels x h x w`, the self-attention
//!   scores `heads x (h w)^2` (Burn materialises them under autodiff and on some backends), the
//!   cross-attention scores `heads x h w x 77`; times 2 with classifier-free guidance;
//! - the VAE decoder: a few live activations at its widest level and full resolution, and its
//!   mid-block attention `(h w)^2` at the latent resolution;
//! - the model weights themselves (counted from the file sizes by the caller).
//!
//! All arithmetic is checked: an overflow means "more than this machine has".

use cm_models::unet::UNetConfig;
use cm_models::vae::VaeConfig;

/// Live activations assumed per layer in the estimate.
const LIVE: u64 = 4;

fn mul(values: &[u64]) -> Option<u64> {
    values.iter().try_fold(1u64, |acc, &v| acc.checked_mul(v))
}

/// Upper-bound bytes of sampling `batch` images of `height x width` pixels (see the module docs);
/// `None` when the number does not even fit in 64 bits.
pub fn sampling_peak_bytes(
    unet: &UNetConfig,
    vae: &VaeConfig,
    batch: usize,
    height: usize,
    width: usize,
    guidance: bool,
) -> Option<u64> {
    let f = vae.downsampling_factor() as u64;
    let (h, w) = (height as u64 / f.max(1), width as u64 / f.max(1));
    let unet_batch = mul(&[batch as u64, if guidance { 2 } else { 1 }])?;
    let mut unet_peak = 0u64;
    for (level, &channels) in unet.block_out_channels.iter().enumerate() {
        let scale = 1u64.checked_shl(level as u32)?;
        let (lh, lw) = ((h / scale).max(1), (w / scale).max(1));
        let tokens = mul(&[lh, lw])?;
        let activations = mul(&[LIVE, channels as u64, tokens])?;
        let heads = unet.heads(level) as u64;
        let self_attention = mul(&[heads, tokens, tokens])?;
        let cross_attention = mul(&[heads, tokens, 77])?;
        let level_bytes = mul(&[
            unet_batch,
            4,
            activations
                .checked_add(self_attention)?
                .checked_add(cross_attention)?,
        ])?;
        unet_peak = unet_peak.max(level_bytes);
    }
    let widest = *vae.block_out_channels.iter().max()? as u64;
    let pixels = mul(&[height as u64, width as u64])?;
    let latent_tokens = mul(&[h, w])?;
    let vae_peak = mul(&[
        batch as u64,
        4,
        mul(&[LIVE, widest, pixels])?.checked_add(mul(&[latent_tokens, latent_tokens])?)?,
    ])?;
    let latents = mul(&[batch as u64, unet.in_channels as u64, h, w, 4, LIVE])?;
    unet_peak.max(vae_peak).checked_add(latents)
}

/// Memory the operating system says is available (`MemAvailable` of `/proc/meminfo`), if known.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `1.5 GiB`-style sizes.
pub fn human(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.1} GiB")
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cm_models::config_json::JsonConfig;

    fn configs() -> (UNetConfig, VaeConfig) {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/sd15");
        (
            UNetConfig::from_json_file(root.join("unet/config.json")).unwrap(),
            VaeConfig::from_json_file(root.join("vae/config.json")).unwrap(),
        )
    }

    #[test]
    fn sd15_at_512_fits_a_laptop_and_huge_requests_do_not() {
        let (unet, vae) = configs();
        let normal = sampling_peak_bytes(&unet, &vae, 1, 512, 512, true).unwrap();
        assert!(
            normal > (1 << 28) && normal < (16u64 << 30),
            "{}",
            human(normal)
        );
        let big = sampling_peak_bytes(&unet, &vae, 1, 8192, 8192, true).unwrap();
        assert!(big > (1u64 << 40), "{}", human(big));
        assert!(
            sampling_peak_bytes(&unet, &vae, 1, 1 << 40, 1 << 40, true).is_none(),
            "overflow is None"
        );
        assert!(sampling_peak_bytes(&unet, &vae, 64, 512, 512, true).unwrap() > 32 * normal);
    }
}
