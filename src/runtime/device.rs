//! `--device cpu|cuda|cuda:N` and `--dtype f32|f16|bf16`: where a command's tensors live
//! and the precision its frozen networks run in. CUDA needs a binary built with the `cuda`
//! cargo feature (scripts/build-cuda.sh); on it the networks run candle's generic ops,
//! while the fused kernels of `nets::kernels` serve f32 on the CPU.

use anyhow::{anyhow, bail, ensure, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;

/// Where a command computes, and in which precision its frozen networks run
/// (trained weights, optimizer state and the sampled state stay f32).
#[derive(Clone, Debug)]
pub struct Runtime {
    pub device: Device,
    pub dtype: DType,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

impl Runtime {
    pub fn parse(device: &str, dtype: &str) -> Result<Self> {
        Ok(Self {
            device: parse(device)?,
            dtype: parse_dtype(dtype)?,
        })
    }

    /// Weights of a frozen network, on this device in this precision.
    pub fn frozen(&self, params: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
        self.convert(params, self.dtype)
    }

    /// Weights to train: on this device, in f32.
    pub fn trainable(&self, params: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
        self.convert(params, DType::F32)
    }

    fn convert(&self, params: &BTreeMap<String, Tensor>, dtype: DType) -> Result<BTreeMap<String, Tensor>> {
        params
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.to_device(&self.device)?.to_dtype(dtype)?)))
            .collect()
    }
}

pub fn parse_dtype(spec: &str) -> Result<DType> {
    Ok(match spec {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        _ => bail!("--dtype {spec}: expected f32, f16 or bf16"),
    })
}

pub fn parse(spec: &str) -> Result<Device> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        // One GPU per rank: a rank's GPU is its index on its node (0 for a single process).
        "cuda" => super::ranks::local_rank(),
        _ => match spec.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => bail!("--device {spec}: expected cpu, cuda or cuda:N"),
        },
    };
    ensure!(
        candle_core::utils::cuda_is_available(),
        "--device {spec}: this dcm was built without the `cuda` feature (scripts/build-cuda.sh builds one)"
    );
    // candle appends a backtrace to CUDA errors; the first line says what went wrong.
    Device::new_cuda(ordinal).map_err(|e| {
        let cause = e.to_string();
        anyhow!(
            "--device {spec}: no usable CUDA device ({})",
            cause.lines().next().unwrap_or_default()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_parsed_or_refused_with_the_flag_named() {
        assert!(parse("cpu").unwrap().is_cpu());
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--device {bad}:")), "{e}");
        }
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert!(parse_dtype("f64").unwrap_err().to_string().starts_with("--dtype f64:"));
        if !candle_core::utils::cuda_is_available() {
            assert!(parse("cuda:1")
                .unwrap_err()
                .to_string()
                .contains("without the `cuda` feature"));
        }
    }
}
