//! The networks the sample-quality metrics run on, loaded from the files people have
//! (README, "Evaluating with the paper's metrics"): `clip:DIR` (a transformers `CLIPModel`
//! folder), `inception:FILE` (pytorch-fid's Inception-v3 weights), `dinov2:DIR` (a
//! transformers `Dinov2Model` folder) and the LAION aesthetic predictor's `.pth`.

use super::image_files::image_files;
use super::sd_eval::load_clip;
use super::sd_metrics::MetricNets;
use crate::models::sd::checkpoint::Checkpoint;
use crate::nets::aesthetic::AestheticPredictor;
use crate::nets::dinov2::Dinov2;
use crate::nets::feature_net::FeatureNet;
use crate::nets::inception::FidInception;
use crate::nets::layers::Params;
use crate::nets::sd::clip_model::ClipModel;
use crate::runtime::device::Runtime;
use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

/// The forms `--model` takes.
pub const MODEL_HELP: &str = "clip:DIR (transformers CLIPModel folder), inception:FILE (pytorch-fid's pt_inception-2015-12-05-6726825d.pth) or dinov2:DIR (transformers Dinov2Model folder)";

/// The feature network `spec` names, in f32 on `rt`'s device.
pub fn load_feature_net(spec: &str, rt: &Runtime) -> Result<Box<dyn FeatureNet>> {
    let (kind, path) = spec
        .split_once(':')
        .ok_or_else(|| anyhow!("--model '{spec}': expected {MODEL_HELP}"))?;
    let path = Path::new(path);
    let net: Box<dyn FeatureNet> = match kind {
        "clip" => Box::new(load_clip(path, rt)?),
        "dinov2" => Box::new(Dinov2::from_dir(path, &rt.device)?),
        "inception" => Box::new(FidInception::load(path, &rt.device, DType::F32)?),
        _ => bail!("--model '{spec}': expected {MODEL_HELP}"),
    };
    Ok(net)
}

/// The aesthetic predictor's `.pth` (or safetensors) in f32 on the CPU.
pub fn load_aesthetic(path: &Path) -> Result<AestheticPredictor> {
    let file = Checkpoint::open(path)?;
    let mut params = Params::new();
    for name in file.names() {
        params.insert(name.clone(), file.load(&name, &Device::Cpu, DType::F32)?);
    }
    AestheticPredictor::from_params(&params).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The metric networks' files as the flags give them (`--clip`, `--inception`, `--dino`,
/// `--aesthetic`, `--real`).
#[derive(Clone, Debug, Default)]
pub struct MetricFiles {
    pub clip: Option<PathBuf>,
    pub inception: Option<PathBuf>,
    pub dino: Option<PathBuf>,
    pub aesthetic: Option<PathBuf>,
    pub real: Option<PathBuf>,
}

/// The networks of [`MetricFiles`], loaded.
pub struct LoadedNets {
    clip: Option<ClipModel>,
    inception: Option<Box<dyn FeatureNet>>,
    dino: Option<Box<dyn FeatureNet>>,
    aesthetic: Option<AestheticPredictor>,
    real: Option<Vec<PathBuf>>,
}

impl MetricFiles {
    /// Loads every network given; errors name the flag. `--aesthetic` needs `--clip` (it scores
    /// CLIP embeddings) and `--real` needs a network.
    pub fn load(&self, rt: &Runtime) -> Result<LoadedNets> {
        let any_net = self.clip.is_some() || self.inception.is_some() || self.dino.is_some();
        ensure!(
            self.aesthetic.is_none() || self.clip.is_some(),
            "--aesthetic scores CLIP ViT-L/14 embeddings: give --clip too"
        );
        ensure!(
            self.real.is_none() || any_net,
            "--real: give a network to compare real images with (--inception, --dino or --clip)"
        );
        let with = |flag: &str, path: &Path| format!("{flag} {}", path.display());
        let net = |kind: &str, flag: &str, path: &Option<PathBuf>| {
            path.as_ref()
                .map(|p| load_feature_net(&format!("{kind}:{}", p.display()), rt).with_context(|| with(flag, p)))
                .transpose()
        };
        let real = match &self.real {
            Some(dir) => {
                let files = image_files(dir).with_context(|| with("--real", dir))?;
                ensure!(
                    files.len() >= 2,
                    "--real {}: {} images; FD needs at least 2",
                    dir.display(),
                    files.len()
                );
                Some(files)
            }
            None => None,
        };
        Ok(LoadedNets {
            clip: self
                .clip
                .as_ref()
                .map(|d| load_clip(d, rt).with_context(|| with("--clip", d)))
                .transpose()?,
            inception: net("inception", "--inception", &self.inception)?,
            dino: net("dinov2", "--dino", &self.dino)?,
            aesthetic: self
                .aesthetic
                .as_ref()
                .map(|p| load_aesthetic(p).with_context(|| with("--aesthetic", p)))
                .transpose()?,
            real,
        })
    }
}

impl LoadedNets {
    pub fn nets(&self) -> MetricNets<'_> {
        MetricNets {
            clip: self.clip.as_ref(),
            inception: self.inception.as_deref(),
            dinov2: self.dino.as_deref(),
            aesthetic: self.aesthetic.as_ref(),
            real: self.real.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/metrics")
            .join(name)
    }

    /// The predictor read from a `torch.save`d state dict scores as its own PyTorch module does
    /// (`scripts/make_metric_fixtures.py`).
    #[test]
    fn aesthetic_predictor_matches_pytorch() {
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("aesthetic_golden.json")).unwrap()).unwrap();
        let rows: Vec<Vec<f32>> = serde_json::from_value(golden["embeddings"].clone()).unwrap();
        let want: Vec<f64> = serde_json::from_value(golden["scores"].clone()).unwrap();
        let embeddings = Tensor::new(rows, &Device::Cpu).unwrap();
        let predictor = load_aesthetic(&fixture("aesthetic.pth")).unwrap();
        assert_eq!(predictor.input_dim(), 16);
        let got = predictor.scores(&embeddings).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
        }
        let wrong = Tensor::zeros((2, 7), DType::F32, &Device::Cpu).unwrap();
        assert!(predictor
            .scores(&wrong)
            .unwrap_err()
            .to_string()
            .contains("takes [B, 16]"));
    }

    /// Flags that need another are refused naming both, before anything loads.
    #[test]
    fn metric_flags_that_need_another_are_refused() {
        let rt = Runtime::default();
        let aesthetic = MetricFiles {
            aesthetic: Some(fixture("aesthetic.pth")),
            ..Default::default()
        };
        assert!(aesthetic
            .load(&rt)
            .err()
            .unwrap()
            .to_string()
            .contains("--aesthetic scores CLIP ViT-L/14 embeddings: give --clip too"));
        let real = MetricFiles {
            real: Some(fixture("")),
            ..Default::default()
        };
        assert!(real
            .load(&rt)
            .err()
            .unwrap()
            .to_string()
            .starts_with("--real: give a network"));
    }

    /// A state dict that is not a chain of linear layers ending in one score is refused by name.
    #[test]
    fn broken_predictors_are_named() {
        let t = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap();
        let cases = [
            (
                vec![("layers.0.weight", t(&[4, 8])), ("layers.0.bias", t(&[4]))],
                "4 outputs, not one score",
            ),
            (
                vec![
                    ("layers.0.weight", t(&[4, 8])),
                    ("layers.0.bias", t(&[4])),
                    ("layers.2.weight", t(&[1, 3])),
                    ("layers.2.bias", t(&[1])),
                ],
                "4 outputs feeds one of 3 inputs",
            ),
            (vec![("layers.0.weight", t(&[1, 8]))], "layers.0.bias is missing"),
            (vec![("head.weight", t(&[1, 8]))], "'head.weight' is not a layer"),
        ];
        for (params, needle) in cases {
            let params: Params = params.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let e = AestheticPredictor::from_params(&params).err().unwrap().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
