//! Finite-difference gradient tests through whole UNet forwards (the tiny fixtures in f64):
//! latents, text inputs, and LoRA factors A and B (nonzero) sampled in every block type. A
//! missing gradient (an op without backward on the path) fails like a wrong one.

use crate::diffusion::condition::TextEmbedding;
use crate::nets::gradcheck::{check, GradCheck};
use crate::nets::lora::{adapter_names, LoraConfig};
use crate::nets::sd::test_util::*;
use crate::nets::sd::unet::{UNet, UNetLora};
use crate::runtime::noise::{seeded, standard_normal};
use candle_core::{DType, Device, Tensor};

const LORA: LoraConfig = LoraConfig { rank: 2, alpha: 4.0 };
/// Relative error allowed per checked entry (central differences in f64 agree to ~1e-8).
const TOL: f64 = 1e-5;
const TIMESTEPS: [f64; 2] = [999.0, 37.0];

fn randn(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let t = standard_normal(&mut seeded(seed), shape, &Device::Cpu).unwrap();
    (t.to_dtype(DType::F64).unwrap() * scale).unwrap()
}

/// Which conditioning inputs a test differentiates besides the latents and the tokens.
#[derive(Clone, Copy)]
enum Extra {
    None,
    /// SDXL: pooled text embedding (time ids are fixed floats).
    Pooled,
    /// LCM: the guidance embedding `timestep_cond`.
    TimestepCond,
}

/// Checks `d sum(unet(x) ⊙ r)` with respect to the latents, the text tokens, the `extra`
/// input and A, B of an adapter on each of `layers` (full module paths), against central
/// differences on `samples` entries of each.
fn check_unet_gradients(model: &str, layers: &[&str], extra: Extra, samples: usize) {
    let (cfg, params) = unet_fixture(model);
    let base = converted(&params, DType::F64);
    let adapted = cfg.lora_layers(layers).unwrap();
    assert_eq!(adapted.len(), layers.len(), "each target must be one full path");
    let b = TIMESTEPS.len();
    let ctx = cfg.layout().unwrap().context_dim;
    let mut inputs = vec![randn(&[b, 4, 8, 8], 1, 1.0), randn(&[b, 5, ctx], 2, 1.0)];
    let time_ids = Tensor::new(
        &[[64f64, 64., 0., 0., 64., 64.], [32., 48., 4., 8., 32., 48.]],
        &Device::Cpu,
    )
    .unwrap();
    match extra {
        Extra::None => {}
        Extra::Pooled => inputs.push(randn(&[b, 32], 3, 1.0)),
        Extra::TimestepCond => inputs.push(randn(&[b, 32], 3, 1.0)),
    }
    let first_adapter = inputs.len();
    let mut names = Vec::new();
    for (i, (path, shape)) in adapted.iter().enumerate() {
        let fan_in: usize = shape[1..].iter().product();
        let a_shape: Vec<usize> = [LORA.rank].iter().chain(&shape[1..]).copied().collect();
        let b_shape: Vec<usize> = [shape[0], LORA.rank]
            .into_iter()
            .chain(shape[2..].iter().map(|_| 1))
            .collect();
        inputs.push(randn(&a_shape, 10 + 2 * i as u64, 1.0 / (fan_in as f64).sqrt()));
        inputs.push(randn(&b_shape, 11 + 2 * i as u64, 0.2));
        let (a, bn) = adapter_names(path);
        names.extend([a, bn]);
    }
    let lora = UNetLora {
        cfg: LORA,
        targets: layers.iter().map(|s| s.to_string()).collect(),
    };
    let r = randn(&[b, 4, 8, 8], 4, 1.0);
    let loss = |t: &[Tensor]| {
        let mut p = base.clone();
        p.extend(names.iter().cloned().zip(t[first_adapter..].iter().cloned()));
        let unet = UNet::new(cfg.clone(), &p, Some(&lora))?;
        let text = TextEmbedding {
            tokens: t[1].clone(),
            pooled: matches!(extra, Extra::Pooled).then(|| t[2].clone()),
            time_ids: matches!(extra, Extra::Pooled).then(|| time_ids.clone()),
        };
        let cond = matches!(extra, Extra::TimestepCond).then(|| t[2].clone());
        let y = unet.forward(&t[0], &TIMESTEPS, &text, cond.as_ref())?;
        Ok((y * &r)?.sum_all()?)
    };
    let opts = GradCheck {
        samples,
        ..GradCheck::default()
    };
    let reports = check(loss, &inputs, &opts).unwrap();
    let worst = reports.iter().map(|r| r.max_rel_err).fold(0.0, f64::max);
    if let Some(w) = reports.iter().find(|r| r.max_rel_err == worst) {
        eprintln!("{model}: worst {w}");
    }
    eprintln!(
        "{model}: {} inputs ({} adapted layers), max relative gradient error {worst:.2e}",
        inputs.len(),
        layers.len()
    );
    let failures: Vec<String> = reports
        .iter()
        .filter_map(|r| r.assert_below(TOL).err())
        .map(|e| {
            let i = e.to_string();
            let name = i
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| n.checked_sub(first_adapter))
                .map_or("input", |k| names[k].as_str());
            format!("{name}: {i}")
        })
        .collect();
    assert!(failures.is_empty(), "{model}:\n{}", failures.join("\n"));
}

/// sd1 (1×1 conv projections): resnet convs, shortcut and time projection, downsampler and
/// upsampler, proj_in/out, self- and cross-attention q/k/v/out, feed-forward, in down, mid and
/// up blocks, the time embedding, conv_in/conv_out; plus the latents and text tokens.
#[test]
fn sd1_unet_gradients_match_finite_differences() {
    let layers = [
        "conv_in",
        "time_embedding.linear_1",
        "time_embedding.linear_2",
        "down_blocks.0.resnets.0.conv1",
        "down_blocks.0.resnets.0.conv2",
        "down_blocks.0.resnets.0.time_emb_proj",
        "down_blocks.0.downsamplers.0.conv",
        "down_blocks.1.resnets.0.conv_shortcut",
        "down_blocks.1.attentions.0.proj_in",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0",
        "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj",
        "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2",
        "down_blocks.1.attentions.0.proj_out",
        "mid_block.resnets.1.conv2",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
        "up_blocks.0.resnets.1.conv_shortcut",
        "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q",
        "up_blocks.0.upsamplers.0.conv",
        "up_blocks.1.resnets.1.time_emb_proj",
        "conv_out",
    ];
    check_unet_gradients("sd1", &layers, Extra::None, 3);
}

/// SDXL (linear projections, two transformer layers, added text-time embedding): adapters on
/// `add_embedding`, linear proj_in/out, the second transformer layer; pooled text gradient.
#[test]
fn sdxl_unet_gradients_match_finite_differences() {
    let layers = [
        "add_embedding.linear_1",
        "add_embedding.linear_2",
        "time_embedding.linear_1",
        "down_blocks.1.attentions.0.proj_in",
        "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_k",
        "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_v",
        "down_blocks.1.attentions.0.transformer_blocks.1.ff.net.0.proj",
        "mid_block.attentions.0.proj_out",
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q",
    ];
    check_unet_gradients("sdxl", &layers, Extra::Pooled, 3);
}

/// LCM's guidance embedding: gradient through `timestep_cond` and an adapter on `cond_proj`.
#[test]
fn lcm_unet_gradients_match_finite_differences() {
    let layers = [
        "time_embedding.cond_proj",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
    ];
    check_unet_gradients("lcm", &layers, Extra::TimestepCond, 4);
}
