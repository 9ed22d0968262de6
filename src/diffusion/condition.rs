//! What a denoiser is conditioned on, one entry per row of a batch: a class label or a
//! text encoding, each with its null counterpart for classifier-free guidance.

use anyhow::{bail, ensure, Result};
use candle_core::Tensor;

/// Text conditioning of a batch, as a text-to-image UNet takes it.
#[derive(Clone, Debug)]
pub struct TextEmbedding {
    /// Token embeddings `[B, L, D]` (the cross-attention context).
    pub tokens: Tensor,
    /// Pooled, projected text embedding `[B, P]` (SDXL's `text_embeds`), if the network takes one.
    pub pooled: Option<Tensor>,
    /// Added conditioning `[B, A]` (SDXL's six size and crop `time_ids`), if the network takes one.
    pub time_ids: Option<Tensor>,
}

impl TextEmbedding {
    fn map(&self, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Self> {
        Ok(Self {
            tokens: f(&self.tokens)?,
            pooled: self.pooled.as_ref().map(&f).transpose()?,
            time_ids: self.time_ids.as_ref().map(&f).transpose()?,
        })
    }

    fn cat(parts: &[&Self]) -> Result<Self> {
        let all = |get: fn(&Self) -> Option<&Tensor>| -> Result<Option<Tensor>> {
            let present: Vec<&Tensor> = parts.iter().filter_map(|p| get(p)).collect();
            match present.len() {
                0 => Ok(None),
                n if n == parts.len() => Ok(Some(Tensor::cat(&present, 0)?)),
                _ => bail!("text conditions to join disagree on pooled or added embeddings"),
            }
        };
        let tokens: Vec<&Tensor> = parts.iter().map(|p| &p.tokens).collect();
        Ok(Self {
            tokens: Tensor::cat(&tokens, 0)?,
            pooled: all(|p| p.pooled.as_ref())?,
            time_ids: all(|p| p.time_ids.as_ref())?,
        })
    }
}

/// The condition of every row of a batch.
#[derive(Clone, Debug)]
pub enum Condition {
    /// A class label per row; `None` is the null label (unconditional prediction).
    Labels(Vec<Option<u32>>),
    /// Text encodings per row, with the null encodings guidance contrasts them with
    /// (the empty prompt's encoding, or zeros).
    Text { text: TextEmbedding, null: TextEmbedding },
}

impl Condition {
    /// `n` rows of the null label.
    pub fn unconditional(n: usize) -> Self {
        Self::Labels(vec![None; n])
    }

    /// One label for `n` rows (`None`: unconditional).
    pub fn repeat(label: Option<u32>, n: usize) -> Self {
        Self::Labels(vec![label; n])
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Labels(l) => l.len(),
            Self::Text { text, .. } => text.tokens.dims().first().copied().unwrap_or(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any row carries a condition that guidance could contrast with the null one.
    pub fn is_conditional(&self) -> bool {
        match self {
            Self::Labels(l) => l.iter().any(Option::is_some),
            Self::Text { .. } => true,
        }
    }

    /// The same rows with the null condition.
    pub fn null(&self) -> Self {
        match self {
            Self::Labels(l) => Self::unconditional(l.len()),
            Self::Text { null, .. } => Self::Text {
                text: null.clone(),
                null: null.clone(),
            },
        }
    }

    /// The class labels, for networks conditioned on classes.
    pub fn labels(&self) -> Result<&[Option<u32>]> {
        match self {
            Self::Labels(l) => Ok(l),
            Self::Text { .. } => bail!("this network is conditioned on class labels, not on text"),
        }
    }

    /// The rows of `parts` one after another.
    pub fn cat(parts: &[&Self]) -> Result<Self> {
        if let Some(labels) = parts.iter().map(|p| p.labels().ok()).collect::<Option<Vec<_>>>() {
            return Ok(Self::Labels(labels.concat()));
        }
        let mut texts = Vec::new();
        let mut nulls = Vec::new();
        for p in parts {
            match p {
                Self::Text { text, null } => {
                    texts.push(text);
                    nulls.push(null);
                }
                Self::Labels(_) => bail!("cannot join label and text conditions in one batch"),
            }
        }
        Ok(Self::Text {
            text: TextEmbedding::cat(&texts)?,
            null: TextEmbedding::cat(&nulls)?,
        })
    }

    /// The rows listed in `index`, in that order.
    pub fn select(&self, index: &[usize]) -> Result<Self> {
        let n = self.len();
        ensure!(index.iter().all(|&i| i < n), "row index out of range for {n} rows");
        Ok(match self {
            Self::Labels(l) => Self::Labels(index.iter().map(|&i| l[i]).collect()),
            Self::Text { text, null } => {
                let device = text.tokens.device();
                let ids = Tensor::from_vec(index.iter().map(|&i| i as u32).collect::<Vec<_>>(), index.len(), device)?;
                let pick = |t: &Tensor| t.index_select(&ids, 0);
                Self::Text {
                    text: text.map(pick)?,
                    null: null.map(pick)?,
                }
            }
        })
    }

    /// Rows `start .. start + len`.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        self.select(&(start..start + len).collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn text(rows: &[f32]) -> TextEmbedding {
        let n = rows.len();
        let v: Vec<f32> = rows.iter().flat_map(|&r| [r; 6]).collect();
        TextEmbedding {
            tokens: Tensor::from_vec(v, (n, 3, 2), &Device::Cpu).unwrap(),
            pooled: Some(Tensor::from_vec(rows.to_vec(), (n, 1), &Device::Cpu).unwrap()),
            time_ids: None,
        }
    }

    fn firsts(t: &TextEmbedding) -> Vec<f32> {
        t.pooled.as_ref().unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Joining, selecting and nulling move every tensor's rows together.
    #[test]
    fn rows_move_together() -> Result<()> {
        let c = Condition::Text {
            text: text(&[1., 2., 3.]),
            null: text(&[0., 0., 0.]),
        };
        let joined = Condition::cat(&[&c, &c.null()])?;
        assert_eq!(joined.len(), 6);
        let picked = joined.select(&[4, 2, 0])?;
        let Condition::Text { text, null } = &picked else {
            panic!("text expected")
        };
        assert_eq!(firsts(text), vec![0., 3., 1.]);
        assert_eq!(firsts(null), vec![0., 0., 0.]);
        assert_eq!(text.tokens.get(1)?.flatten_all()?.to_vec1::<f32>()?, vec![3.; 6]);
        let labels = Condition::Labels(vec![Some(1), None, Some(3)]);
        assert_eq!(labels.narrow(1, 2)?.labels()?, &[None, Some(3)]);
        assert_eq!(Condition::cat(&[&labels, &labels.null()])?.labels()?.len(), 6);
        assert!(Condition::cat(&[&labels, &c]).is_err());
        assert!(c.labels().is_err());
        Ok(())
    }
}
