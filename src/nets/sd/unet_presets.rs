//! The `unet/config.json` values of the released checkpoints the benchmarks run (SD 1.5 and
//! SDXL base), so that a UNet of the real size can be built without a download.

use crate::nets::sd::unet_config::{PerBlock, UNetConfig};

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl UNetConfig {
    /// `runwayml/stable-diffusion-v1-5` (859,520,964 parameters): diffusers' defaults but for
    /// CLIP ViT-L's 768-wide context.
    pub fn sd15() -> Self {
        Self {
            sample_size: Some(64.into()),
            cross_attention_dim: PerBlock::One(768),
            ..Self::default()
        }
    }

    /// `stabilityai/stable-diffusion-xl-base-1.0` (2,567,463,684 parameters).
    pub fn sdxl() -> Self {
        Self {
            sample_size: Some(128.into()),
            down_block_types: strings(&["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]),
            up_block_types: strings(&["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]),
            block_out_channels: vec![320, 640, 1280],
            attention_head_dim: PerBlock::Each(vec![5, 10, 20]),
            cross_attention_dim: PerBlock::One(2048),
            transformer_layers_per_block: PerBlock::Each(vec![1, 2, 10]),
            use_linear_projection: true,
            addition_embed_type: Some("text_time".into()),
            addition_time_embed_dim: Some(256),
            projection_class_embeddings_input_dim: Some(2816),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The presets have the released checkpoints' parameter counts (diffusers' `numel` sums).
    #[test]
    fn presets_have_the_released_parameter_counts() {
        for (cfg, want) in [(UNetConfig::sd15(), 859_520_964), (UNetConfig::sdxl(), 2_567_463_684)] {
            let shapes = cfg.tensor_shapes().unwrap();
            let count: usize = shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
            assert_eq!(count, want);
        }
    }
}
