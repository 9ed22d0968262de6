//! Prompts to the UNet's text conditioning, as diffusers' `encode_prompt` computes it, and the
//! unconditional input classifier-free guidance contrasts it with.
//!
//! SD 1.x/2.x: the text encoder's last hidden state. SDXL: both encoders' penultimate hidden
//! states concatenated, the second's pooled projection (`text_embeds`) and the six size ids
//! `(H, W, 0, 0, H, W)` (original size, crop corner, target size) of the generated image.

use super::pipeline::{Family, Pipeline};
use crate::diffusion::condition::{Condition, TextEmbedding};
use crate::nets::sd::clip_text::{sd_prompt_embeds, sdxl_prompt_embeds, ClipTextModel};
use crate::nets::sd::tokenizer::ClipTokenizer;
use crate::runtime::device::Runtime;
use anyhow::{anyhow, bail, ensure, Result};
use candle_core::Tensor;

/// A tokenizer and the text encoder it feeds.
pub struct TextEncoder {
    pub tokenizer: ClipTokenizer,
    pub model: ClipTextModel,
}

impl TextEncoder {
    /// A pipeline's text encoder `i` and its tokenizer, the model in the runtime's precision;
    /// a tokenizer with ids the encoder has no embedding for is refused here, naming the file,
    /// rather than at the first prompt that uses one.
    fn load(pipeline: &Pipeline, i: usize, rt: &Runtime) -> Result<Self> {
        let (cfg, params, path) = pipeline.text_encoder(i, rt)?;
        let tokenizer = pipeline.tokenizer(i)?;
        let at = path.display();
        ensure!(
            tokenizer.vocab_size() <= cfg.vocab_size,
            "{at}: the tokenizer has {} tokens but the text encoder's vocab_size is {}",
            tokenizer.vocab_size(),
            cfg.vocab_size
        );
        ensure!(
            tokenizer.max_length() <= cfg.max_position_embeddings,
            "{at}: the tokenizer pads prompts to {} tokens (its model_max_length) but the text encoder has {} positions (max_position_embeddings)",
            tokenizer.max_length(),
            cfg.max_position_embeddings
        );
        let model = ClipTextModel::new(&cfg, &params).map_err(|e| anyhow!("{at}: {e}"))?;
        let sdxl_second = i == 1;
        ensure!(
            !sdxl_second || model.has_projection(),
            "{at}: SDXL's second text encoder needs text_projection.weight (a CLIPTextModelWithProjection)"
        );
        Ok(Self { tokenizer, model })
    }

    fn ids(&self, prompts: &[String]) -> Result<Tensor> {
        self.tokenizer.encode_batch(prompts)
    }
}

/// The text side of a pipeline: SD 1.x/2.x's one encoder, or SDXL's two.
pub struct PromptEncoder {
    pub first: TextEncoder,
    /// SDXL's second encoder (`tokenizer_2`, `text_encoder_2`, with a projection).
    pub second: Option<TextEncoder>,
}

/// The unconditional input of guidance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NullText {
    /// As the diffusers pipeline with `negative_prompt=None`: the empty prompt's encoding, or
    /// for SDXL with `force_zeros_for_empty_prompt` zeros.
    Pipeline,
    /// The encoding of this negative prompt (`""` included, as diffusers' `negative_prompt=""`).
    Prompt(String),
    /// Zero embeddings (the paper's training code).
    Zeros,
}

impl NullText {
    /// From `--negative-prompt TEXT` and `--uncond zeros|empty` (at most one of them).
    pub fn from_flags(negative: Option<&str>, uncond: Option<&str>) -> Result<Self> {
        match (negative, uncond) {
            (None, None) => Ok(Self::Pipeline),
            (Some(p), None) => Ok(Self::Prompt(p.to_string())),
            (None, Some("zeros")) => Ok(Self::Zeros),
            (None, Some("empty")) => Ok(Self::Prompt(String::new())),
            (None, Some(other)) => bail!("--uncond {other}: expected zeros or empty"),
            (Some(_), Some(_)) => bail!("give --negative-prompt or --uncond, not both"),
        }
    }
}

impl PromptEncoder {
    /// A pipeline's tokenizers and text encoders, in the runtime's precision.
    pub fn load(pipeline: &Pipeline, rt: &Runtime) -> Result<Self> {
        Ok(Self {
            first: TextEncoder::load(pipeline, 0, rt)?,
            second: match pipeline.family() {
                Family::Sd => None,
                Family::Sdxl { .. } => Some(TextEncoder::load(pipeline, 1, rt)?),
            },
        })
    }

    /// Prompt embeddings `[B, 77, D]` and, for SDXL, the pooled embedding `[B, P]`.
    pub fn encode(&self, prompts: &[String]) -> Result<(Tensor, Option<Tensor>)> {
        ensure!(!prompts.is_empty(), "no prompts to encode");
        let e1 = &self.first;
        Ok(match &self.second {
            None => (sd_prompt_embeds(&e1.model, &e1.ids(prompts)?)?, None),
            Some(e2) => {
                let (tokens, pooled) = sdxl_prompt_embeds(&e1.model, &e2.model, &e1.ids(prompts)?, &e2.ids(prompts)?)?;
                (tokens, Some(pooled))
            }
        })
    }

    /// The condition of one row per prompt, with the unconditional input `null` (SDXL's
    /// `force_zeros_for_empty_prompt` given) and, for SDXL, the size ids of an image of
    /// `image_hw` pixels (the same for both halves, as the pipeline).
    pub fn condition(
        &self,
        prompts: &[String],
        null: &NullText,
        force_zeros_for_empty_prompt: bool,
        image_hw: (usize, usize),
    ) -> Result<Condition> {
        let rows = prompts.len();
        let (tokens, pooled) = self.encode(prompts)?;
        // The negative prompt to encode; none: zeros.
        let negative = match null {
            NullText::Zeros => None,
            NullText::Pipeline if self.second.is_some() && force_zeros_for_empty_prompt => None,
            NullText::Pipeline => Some(""),
            NullText::Prompt(p) => Some(p.as_str()),
        };
        let (null_tokens, null_pooled) = match negative {
            None => (
                tokens.zeros_like()?,
                pooled.as_ref().map(Tensor::zeros_like).transpose()?,
            ),
            Some(p) => {
                let (t, pooled) = self.encode(&[p.to_string()])?;
                (
                    repeat_rows(&t, rows)?,
                    pooled.map(|p| repeat_rows(&p, rows)).transpose()?,
                )
            }
        };
        let time_ids = self
            .second
            .as_ref()
            .map(|_| size_ids(image_hw, rows, tokens.device()))
            .transpose()?;
        Ok(Condition::Text {
            text: TextEmbedding {
                tokens,
                pooled,
                time_ids: time_ids.clone(),
            },
            null: TextEmbedding {
                tokens: null_tokens,
                pooled: null_pooled,
                time_ids,
            },
        })
    }
}

/// `rows` copies of a one-row tensor.
fn repeat_rows(t: &Tensor, rows: usize) -> Result<Tensor> {
    let mut dims = t.dims().to_vec();
    dims[0] = rows;
    Ok(t.broadcast_as(dims)?.contiguous()?)
}

/// SDXL's `add_time_ids` `[rows, 6]` = `(H, W, 0, 0, H, W)` as floats: original size, crop
/// top-left, target size (the pipeline's defaults for an H × W image).
fn size_ids((h, w): (usize, usize), rows: usize, device: &candle_core::Device) -> Result<Tensor> {
    let (h, w) = (h as f32, w as f32);
    let one = Tensor::new(&[h, w, 0.0, 0.0, h, w], device)?;
    repeat_rows(&one.unsqueeze(0)?, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::sd::test_util::{copy_pipeline, fixture, golden, max_abs_diff, prompts};

    const TOL: f64 = 1e-5;

    fn parts(c: &Condition) -> (&TextEmbedding, &TextEmbedding) {
        match c {
            Condition::Text { text, null } => (text, null),
            Condition::Labels(_) => panic!("text condition expected"),
        }
    }

    fn close(what: &str, got: &Tensor, want: &Tensor) {
        let err = max_abs_diff(got, want);
        eprintln!("{what}: max |Δ| = {err:.2e}");
        assert!(err <= TOL, "{what}: {err:e}");
    }

    fn encoder(model: &str) -> PromptEncoder {
        PromptEncoder::load(&Pipeline::open(&fixture(model)).unwrap(), &Runtime::default()).unwrap()
    }

    /// SD 1.x/2.x: the prompts' and the empty prompt's last hidden states (`encode_prompt`).
    #[test]
    fn sd_conditions_match_encode_prompt() {
        for model in ["sd1", "sd2"] {
            let (g, p) = (golden(model), prompts(model));
            let c = encoder(model)
                .condition(&p, &NullText::Pipeline, false, (16, 16))
                .unwrap();
            let (text, null) = parts(&c);
            close(
                &format!("{model} prompt_embeds"),
                &text.tokens,
                &g["encode_prompt.prompt_embeds"],
            );
            close(
                &format!("{model} negative"),
                &null.tokens,
                &g["encode_prompt.negative_prompt_embeds"],
            );
            assert!(text.pooled.is_none() && text.time_ids.is_none() && null.time_ids.is_none());
            let c = encoder(model).condition(&p, &NullText::Zeros, false, (16, 16)).unwrap();
            assert_eq!(
                parts(&c)
                    .1
                    .tokens
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
                0.0
            );
        }
    }

    /// SDXL: zeros for the default negative (force_zeros_for_empty_prompt), the real encoding
    /// of "" when asked for, pooled embeddings and the size ids `(16, 16, 0, 0, 16, 16)`.
    #[test]
    fn sdxl_conditions_match_encode_prompt() {
        let (g, p) = (golden("sdxl"), prompts("sdxl"));
        let enc = encoder("sdxl");
        let c = enc.condition(&p, &NullText::Pipeline, true, (16, 16)).unwrap();
        let (text, null) = parts(&c);
        close("sdxl prompt_embeds", &text.tokens, &g["encode_prompt.prompt_embeds"]);
        close(
            "sdxl pooled",
            text.pooled.as_ref().unwrap(),
            &g["encode_prompt.pooled_prompt_embeds"],
        );
        close(
            "sdxl negative",
            &null.tokens,
            &g["encode_prompt.negative_prompt_embeds"],
        );
        let want = &g["encode_prompt.negative_pooled_prompt_embeds"];
        close("sdxl negative pooled", null.pooled.as_ref().unwrap(), want);
        let ids = [16f32, 16., 0., 0., 16., 16.];
        for t in [text, null] {
            assert_eq!(
                t.time_ids.as_ref().unwrap().to_vec2::<f32>().unwrap(),
                vec![ids.to_vec(); 3]
            );
        }
        // negative_prompt="" (force_zeros applies only without one), or a pipeline without force_zeros.
        for (null_text, force_zeros) in [(NullText::Prompt(String::new()), true), (NullText::Pipeline, false)] {
            let c = enc.condition(&p, &null_text, force_zeros, (16, 16)).unwrap();
            let null = parts(&c).1;
            let want = &g["encode_prompt_empty_negative.negative_prompt_embeds"];
            close("sdxl empty negative", &null.tokens, want);
            let want = &g["encode_prompt_empty_negative.negative_pooled_prompt_embeds"];
            close("sdxl empty negative pooled", null.pooled.as_ref().unwrap(), want);
        }
        let c = enc.condition(&p[..1], &NullText::Pipeline, true, (24, 40)).unwrap();
        assert_eq!(
            parts(&c).0.time_ids.as_ref().unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![24f32, 40., 0., 0., 24., 40.]]
        );
    }

    /// A pipeline whose `tokenizer/` holds only `tokenizer.json` (transformers ≥ 5) conditions
    /// the UNet exactly as the `vocab.json` + `merges.txt` one.
    #[test]
    fn tokenizer_json_layout_conditions_the_same() {
        let dir = copy_pipeline("sd1", "tokenizer-json");
        for file in ["vocab.json", "merges.txt"] {
            std::fs::remove_file(dir.join("tokenizer").join(file)).unwrap();
        }
        let json_only = PromptEncoder::load(&Pipeline::open(&dir).unwrap(), &Runtime::default()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let p = prompts("sd1");
        let c = json_only.condition(&p, &NullText::Pipeline, false, (16, 16)).unwrap();
        let want = encoder("sd1")
            .condition(&p, &NullText::Pipeline, false, (16, 16))
            .unwrap();
        for (got, want) in [(parts(&c).0, parts(&want).0), (parts(&c).1, parts(&want).1)] {
            assert_eq!(max_abs_diff(&got.tokens, &want.tokens), 0.0);
        }
    }

    #[test]
    fn null_text_from_flags() {
        assert_eq!(NullText::from_flags(None, None).unwrap(), NullText::Pipeline);
        assert_eq!(
            NullText::from_flags(Some("ugly"), None).unwrap(),
            NullText::Prompt("ugly".into())
        );
        assert_eq!(NullText::from_flags(None, Some("zeros")).unwrap(), NullText::Zeros);
        assert_eq!(
            NullText::from_flags(None, Some("empty")).unwrap(),
            NullText::Prompt(String::new())
        );
        assert!(NullText::from_flags(None, Some("none")).is_err());
        assert!(NullText::from_flags(Some(""), Some("zeros")).is_err());
    }

    /// A tokenizer whose ids the encoder cannot embed is refused at load, naming the encoder's
    /// weights file, instead of failing at the first prompt with an id beyond the vocabulary.
    #[test]
    fn a_tokenizer_larger_than_the_vocabulary_is_named() {
        let dir = copy_pipeline("sd1", "vocab");
        let config = dir.join("text_encoder/config.json");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text.replace("\"vocab_size\": 514", "\"vocab_size\": 300")).unwrap();
        let e = PromptEncoder::load(&Pipeline::open(&dir).unwrap(), &Runtime::default())
            .err()
            .unwrap()
            .to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.contains(
                "text_encoder/model.safetensors: the tokenizer has 514 tokens but the text encoder's vocab_size is 300"
            ),
            "{e}"
        );
    }
}
