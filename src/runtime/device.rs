//! `--device cpu|cuda|cuda:N`: where a command's tensors live. CUDA needs a binary built
//! with the `cuda` cargo feature (scripts/build-cuda.sh); on it the networks run candle's
//! generic ops, while the fused kernels of `kernels` serve the CPU.

use anyhow::{anyhow, bail, ensure, Result};
use candle_core::Device;

pub fn parse(spec: &str) -> Result<Device> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
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
        if !candle_core::utils::cuda_is_available() {
            assert!(parse("cuda:1")
                .unwrap_err()
                .to_string()
                .contains("without the `cuda` feature"));
        }
    }
}
