//! The samples of one block of an SD evaluation's rows, as one rank makes them and rank 0
//! receives them. Ranks split the UNet work (the teacher's solve when it is not cached, every
//! student's sampler) a block each per round; rank 0 then takes the blocks in row order, so it
//! scores, caches and writes exactly what one process would.
//!
//! On the wire a block is a flat list of float64 (exact for the f32 latents and u8 images):
//! `start, len, has_teacher, models`, then per model `seconds`, and per tensor its rank, dims
//! and values.

use crate::runtime::ranks;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};

/// One model's samples of a block: latents f32 and images u8 on the CPU.
pub struct Sampled {
    pub latents: Tensor,
    pub images: Tensor,
    pub seconds: f64,
}

/// A block's samples: the teacher's when made now (not read from the cache), and each K's.
pub struct MadeBlock {
    pub start: usize,
    pub len: usize,
    pub teacher: Option<Sampled>,
    pub students: Vec<Sampled>,
}

/// Every rank's block of this round (`None` where a rank had none), on rank 0 in rank order;
/// nothing on the others.
pub fn gather(mine: Option<MadeBlock>) -> Result<Vec<MadeBlock>> {
    let wire = match &mine {
        Some(block) => encode(block)?,
        None => Vec::new(),
    };
    if ranks::place().size == 1 {
        return Ok(mine.into_iter().collect());
    }
    let parts = ranks::gather(&wire).context("gathering evaluation samples from the ranks")?;
    parts.iter().filter(|p| !p.is_empty()).map(|p| decode(p)).collect()
}

fn encode(block: &MadeBlock) -> Result<Vec<f64>> {
    let mut out = vec![
        block.start as f64,
        block.len as f64,
        f64::from(u8::from(block.teacher.is_some())),
        block.students.len() as f64,
    ];
    for sampled in block.teacher.iter().chain(&block.students) {
        out.push(sampled.seconds);
        push_tensor(&mut out, &sampled.latents)?;
        push_tensor(&mut out, &sampled.images)?;
    }
    Ok(out)
}

fn push_tensor(out: &mut Vec<f64>, t: &Tensor) -> Result<()> {
    out.push(t.rank() as f64);
    out.extend(t.dims().iter().map(|&d| d as f64));
    out.extend(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?);
    Ok(())
}

/// Reads a block back, in the order `encode` wrote it.
struct Reader<'a> {
    values: &'a [f64],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[f64]> {
        ensure!(
            self.at + n <= self.values.len(),
            "a rank sent a truncated evaluation block"
        );
        self.at += n;
        Ok(&self.values[self.at - n..self.at])
    }

    fn count(&mut self) -> Result<usize> {
        Ok(self.take(1)?[0] as usize)
    }

    fn tensor(&mut self, dtype: DType) -> Result<Tensor> {
        let rank = self.count()?;
        let dims: Vec<usize> = self.take(rank)?.iter().map(|&d| d as usize).collect();
        let values = self.take(dims.iter().product())?.to_vec();
        Ok(Tensor::from_vec(values, dims, &Device::Cpu)?.to_dtype(dtype)?)
    }

    fn sampled(&mut self) -> Result<Sampled> {
        let seconds = self.take(1)?[0];
        Ok(Sampled {
            seconds,
            latents: self.tensor(DType::F32)?,
            images: self.tensor(DType::U8)?,
        })
    }
}

fn decode(values: &[f64]) -> Result<MadeBlock> {
    let mut r = Reader { values, at: 0 };
    let (start, len) = (r.count()?, r.count()?);
    let has_teacher = r.count()? == 1;
    let models = r.count()?;
    let teacher = has_teacher.then(|| r.sampled()).transpose()?;
    let students = (0..models).map(|_| r.sampled()).collect::<Result<Vec<_>>>()?;
    ensure!(
        r.at == values.len(),
        "a rank sent an evaluation block with trailing values"
    );
    Ok(MadeBlock {
        start,
        len,
        teacher,
        students,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block survives the wire bit for bit: f32 latents (any value, incl. subnormals) and u8
    /// images through float64 and back.
    #[test]
    fn blocks_round_trip_exactly() {
        let latents = Tensor::new(&[[1.5f32, -3.25e-39], [f32::MAX, -0.0]], &Device::Cpu).unwrap();
        let images = Tensor::new(&[[0u8, 255], [7, 128]], &Device::Cpu).unwrap();
        let sampled = |s| Sampled {
            latents: latents.clone(),
            images: images.clone(),
            seconds: s,
        };
        let block = MadeBlock {
            start: 8,
            len: 2,
            teacher: Some(sampled(0.5)),
            students: vec![sampled(1.0), sampled(2.0)],
        };
        let back = decode(&encode(&block).unwrap()).unwrap();
        assert_eq!((back.start, back.len, back.students.len()), (8, 2, 2));
        for (a, b) in block
            .teacher
            .iter()
            .chain(&block.students)
            .zip(back.teacher.iter().chain(&back.students))
        {
            assert_eq!(a.seconds, b.seconds);
            let bits = |t: &Tensor| -> Vec<u32> {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            assert_eq!(bits(&a.latents), bits(&b.latents));
            assert_eq!(
                a.images.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
                b.images.flatten_all().unwrap().to_vec1::<u8>().unwrap()
            );
        }
        assert!(
            decode(&encode(&block).unwrap()[..10]).is_err(),
            "a truncated block is refused"
        );
    }
}
