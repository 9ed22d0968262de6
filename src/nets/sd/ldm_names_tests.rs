//! ldm names: one-to-one over every parameter of the fixtures' UNets, and the released
//! checkpoints' known names for the SD 1.5 and SDXL presets.

use crate::nets::sd::ldm_names::LdmUnetNames;
use crate::nets::sd::test_util::unet_fixture;
use crate::nets::sd::unet_config::UNetConfig;
use std::collections::BTreeSet;

/// The roots of an ldm UNet's state dict.
const LDM_ROOTS: [&str; 6] = [
    "time_embed.",
    "label_emb.",
    "input_blocks.",
    "middle_block.",
    "output_blocks.",
    "out.",
];

/// Every parameter of the config has exactly one ldm name, distinct from all others, under an
/// ldm root, with the same last component, and maps back to itself; so do its modules.
fn assert_bijection(cfg: &UNetConfig, what: &str) {
    let names = LdmUnetNames::new(cfg).unwrap();
    let params = cfg.tensor_shapes().unwrap();
    assert!(names.unmapped().is_empty(), "{what}: {:?}", names.unmapped());
    assert_eq!(names.params().len(), params.len(), "{what}");
    let mut seen = BTreeSet::new();
    for (param, _) in &params {
        let ldm = names
            .to_ldm(param)
            .unwrap_or_else(|| panic!("{what}: '{param}' unmapped"));
        assert!(LDM_ROOTS.iter().any(|r| ldm.starts_with(r)), "{what}: {param} → {ldm}");
        assert_eq!(
            param.rsplit('.').next(),
            ldm.rsplit('.').next(),
            "{what}: {param} → {ldm}"
        );
        assert!(seen.insert(ldm.clone()), "{what}: '{ldm}' named twice");
        assert_eq!(names.to_diffusers(&ldm).as_deref(), Some(param.as_str()), "{what}");
        let module = &param[..param.rfind('.').unwrap()];
        let ldm_module = names
            .to_ldm(module)
            .unwrap_or_else(|| panic!("{what}: module '{module}'"));
        assert_eq!(names.to_diffusers(&ldm_module).as_deref(), Some(module), "{what}");
    }
}

/// Every parameter of the three tiny pipelines' UNets (SD 1.x conv projections, SD 2.x's per-block
/// heads, SDXL's added embedding and two-layer transformers) maps one-to-one.
#[test]
fn every_fixture_parameter_maps_one_to_one() {
    for model in ["sd1", "sd2", "sdxl"] {
        assert_bijection(&unet_fixture(model).0, model);
    }
}

/// Levels with different numbers of resnets keep the numbering sequential.
#[test]
fn uneven_levels_map_one_to_one() {
    let mut cfg = unet_fixture("sd1").0;
    cfg.layers_per_block = crate::nets::sd::unet_config::PerBlock::Each(vec![1, 3]);
    assert_bijection(&cfg, "layers [1, 3]");
    let names = LdmUnetNames::new(&cfg).unwrap();
    let pairs = [
        ("down_blocks.0.downsamplers.0.conv", "input_blocks.2.0.op"),
        ("down_blocks.1.attentions.2.proj_in", "input_blocks.5.1.proj_in"),
        ("up_blocks.0.resnets.3.conv1", "output_blocks.3.0.in_layers.2"),
        ("up_blocks.0.upsamplers.0.conv", "output_blocks.3.2.conv"),
        (
            "up_blocks.1.resnets.1.conv_shortcut",
            "output_blocks.5.0.skip_connection",
        ),
    ];
    assert_pairs(&names, &pairs);
}

fn assert_pairs(names: &LdmUnetNames, pairs: &[(&str, &str)]) {
    for (d, l) in pairs {
        assert_eq!(names.to_ldm(d).as_deref(), Some(*l), "{d}");
        assert_eq!(names.to_diffusers(l).as_deref(), Some(*d), "{l}");
        let (dw, lw) = (format!("{d}.weight"), format!("{l}.weight"));
        assert_eq!(names.to_ldm(&dw), Some(lw.clone()), "{dw}");
        assert_eq!(names.to_diffusers(&lw), Some(dw), "{lw}");
        // Attention's q/k/v have no bias: then neither naming has one.
        let (db, lb) = (format!("{d}.bias"), format!("{l}.bias"));
        let bias = names.to_ldm(&db);
        assert!(bias.is_none() || bias == Some(lb.clone()), "{db}");
        assert_eq!(names.to_diffusers(&lb), bias.map(|_| db), "{lb}");
    }
}

/// Names in the released SD 1.5 checkpoint (`v1-5-pruned-emaonly.safetensors`).
#[test]
fn sd15_matches_the_released_checkpoint_names() {
    let cfg = UNetConfig::sd15();
    assert_bijection(&cfg, "sd15");
    let names = LdmUnetNames::new(&cfg).unwrap();
    assert_eq!(names.params().len(), 686);
    let pairs = [
        ("time_embedding.linear_1", "time_embed.0"),
        ("time_embedding.linear_2", "time_embed.2"),
        ("conv_in", "input_blocks.0.0"),
        ("down_blocks.0.resnets.0.norm1", "input_blocks.1.0.in_layers.0"),
        ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
        (
            "down_blocks.1.resnets.0.conv_shortcut",
            "input_blocks.4.0.skip_connection",
        ),
        (
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
        ),
        ("down_blocks.2.downsamplers.0.conv", "input_blocks.9.0.op"),
        ("down_blocks.3.resnets.1.conv2", "input_blocks.11.0.out_layers.3"),
        ("mid_block.resnets.0.norm2", "middle_block.0.out_layers.0"),
        ("mid_block.attentions.0.proj_in", "middle_block.1.proj_in"),
        ("mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
        ("up_blocks.0.resnets.0.conv1", "output_blocks.0.0.in_layers.2"),
        ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv"),
        (
            "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.0.proj",
            "output_blocks.5.1.transformer_blocks.0.ff.net.0.proj",
        ),
        ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
        ("up_blocks.2.upsamplers.0.conv", "output_blocks.8.2.conv"),
        (
            "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0",
            "output_blocks.11.1.transformer_blocks.0.attn2.to_out.0",
        ),
        (
            "up_blocks.3.resnets.2.conv_shortcut",
            "output_blocks.11.0.skip_connection",
        ),
        ("conv_norm_out", "out.0"),
        ("conv_out", "out.2"),
    ];
    assert_pairs(&names, &pairs);
    assert_eq!(names.to_ldm("up_blocks.3.upsamplers.0.conv"), None);
    assert_eq!(names.to_diffusers("input_blocks.12.0.op.weight"), None);
}

/// Names in the released SDXL base checkpoint (`sd_xl_base_1.0.safetensors`): the first up
/// block's upsampler follows its transformer (`output_blocks.2.2`).
#[test]
fn sdxl_matches_the_released_checkpoint_names() {
    let cfg = UNetConfig::sdxl();
    assert_bijection(&cfg, "sdxl");
    let names = LdmUnetNames::new(&cfg).unwrap();
    assert_eq!(names.params().len(), 1680);
    let pairs = [
        ("add_embedding.linear_1", "label_emb.0.0"),
        ("add_embedding.linear_2", "label_emb.0.2"),
        ("down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"),
        ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
        (
            "down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k",
            "input_blocks.5.1.transformer_blocks.1.attn2.to_k",
        ),
        ("down_blocks.1.downsamplers.0.conv", "input_blocks.6.0.op"),
        (
            "down_blocks.2.attentions.0.transformer_blocks.9.ff.net.2",
            "input_blocks.7.1.transformer_blocks.9.ff.net.2",
        ),
        ("down_blocks.2.attentions.1.proj_out", "input_blocks.8.1.proj_out"),
        (
            "mid_block.attentions.0.transformer_blocks.9.norm3",
            "middle_block.1.transformer_blocks.9.norm3",
        ),
        (
            "up_blocks.0.attentions.2.transformer_blocks.9.attn1.to_v",
            "output_blocks.2.1.transformer_blocks.9.attn1.to_v",
        ),
        ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
        ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
        (
            "up_blocks.2.resnets.2.conv_shortcut",
            "output_blocks.8.0.skip_connection",
        ),
    ];
    assert_pairs(&names, &pairs);
    assert_eq!(names.to_diffusers("output_blocks.2.1.conv.weight"), None);
}

/// LCM's guidance embedding has no ldm counterpart: listed, not invented.
#[test]
fn lcm_guidance_embedding_is_unmapped() {
    let cfg = UNetConfig {
        time_cond_proj_dim: Some(256),
        ..UNetConfig::sd15()
    };
    let names = LdmUnetNames::new(&cfg).unwrap();
    assert_eq!(names.unmapped(), ["time_embedding.cond_proj.weight"]);
    assert_eq!(names.to_ldm("time_embedding.cond_proj.weight"), None);
    assert_eq!(names.params().len(), 686);
}
