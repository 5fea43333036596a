//! A batch of token ids as the model takes it, with its masks and positions, validated
//! once. Shapes: ids [b, t]; attention_mask [b, past + t] (1 = attend, 0 = padding).
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};

#[derive(Debug, Clone)]
pub struct Batch {
    pub ids: Vec<Vec<u32>>,
    /// Key mask over past and present positions, one row per sequence; None = all ones.
    pub attention_mask: Option<Vec<Vec<u8>>>,
    /// Position ids [b, t]; None = `past_len + 0..t` as transformers' forward does.
    pub position_ids: Option<Vec<Vec<i64>>>,
    /// Packed sequences: [b, t] example ids; a token attends only to keys of its own
    /// example (a block-diagonal causal mask). None = one example per row.
    pub segment_ids: Option<Vec<Vec<u32>>>,
}

impl Batch {
    pub fn new(ids: Vec<Vec<u32>>) -> Self {
        Batch { ids, attention_mask: None, position_ids: None, segment_ids: None }
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.ids.len(), self.ids.first().map_or(0, Vec::len))
    }

    pub fn validate(&self, vocab_size: usize, past_len: usize) -> Result<()> {
        let (b, t) = self.dims();
        if b == 0 || t == 0 {
            return Err(Error::arg("inputIds", "a non-empty [batch, seq] array", format!("shape [{b}, {t}]")));
        }
        for (r, row) in self.ids.iter().enumerate() {
            if row.len() != t {
                return Err(Error::arg("inputIds", format!("rows of equal length {t}"), format!("row {r} of length {}", row.len())));
            }
            if let Some((c, id)) = row.iter().enumerate().find(|(_, &id)| id as usize >= vocab_size) {
                return Err(Error::arg("inputIds", format!("token ids below the vocab size {vocab_size}"), format!("{id} at [{r}, {c}]")));
            }
        }
        if let Some(mask) = &self.attention_mask {
            let want = past_len + t;
            if mask.len() != b || mask.iter().any(|m| m.len() != want) {
                let found = format!("[{}, {}]", mask.len(), mask.first().map_or(0, Vec::len));
                return Err(Error::arg("attentionMask", format!("shape [{b}, {want}] (the shape of inputIds)"), found));
            }
        }
        if let Some(seg) = &self.segment_ids {
            if past_len > 0 {
                return Err(Error::arg("segmentIds", "no KV cache (packing is for training)", "a cached prefix"));
            }
            if seg.len() != b || seg.iter().any(|s| s.len() != t) {
                return Err(Error::arg("segmentIds", format!("shape [{b}, {t}] (the shape of inputIds)"), format!("{} rows", seg.len())));
            }
            if seg.iter().flatten().any(|&s| s == SHARED_SEGMENT) {
                return Err(Error::arg("segmentIds", format!("example ids below {SHARED_SEGMENT}"), SHARED_SEGMENT.to_string()));
            }
        }
        if let Some(pos) = &self.position_ids {
            if pos.len() != b || pos.iter().any(|p| p.len() != t) {
                return Err(Error::arg("positionIds", format!("shape [{b}, {t}]"), format!("{} rows", pos.len())));
            }
        }
        Ok(())
    }

    pub fn ids_tensor(&self, device: &Device) -> Result<Tensor> {
        let (b, t) = self.dims();
        let flat: Vec<u32> = self.ids.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (b, t), device)?)
    }

    pub fn positions(&self, past_len: usize) -> Vec<Vec<i64>> {
        match &self.position_ids {
            Some(p) => p.clone(),
            None => {
                let (b, t) = self.dims();
                vec![(past_len as i64..(past_len + t) as i64).collect(); b]
            }
        }
    }

    /// Additive attention bias [b, 1, t, past + t]: 0 where a query may attend a key
    /// (causal, the key is not padding, and with packing it is of the query's example),
    /// the dtype's most negative value elsewhere, as transformers builds it (a fully masked
    /// row then attends uniformly, never NaN).
    pub fn attention_bias(&self, past_len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let (b, t) = self.dims();
        let segments = self.key_segments(past_len);
        attention_bias(self.attention_mask.as_deref(), segments.as_deref(), b, t, past_len, None, dtype, device)
    }

    /// `segment_ids` over the keys: `shared` positions every example attends (virtual
    /// tokens, key prefixes) first, then the batch's. None without packing.
    pub fn key_segments(&self, shared: usize) -> Option<Vec<Vec<u32>>> {
        let seg = self.segment_ids.as_ref()?;
        Some(seg.iter().map(|r| [vec![SHARED_SEGMENT; shared], r.clone()].concat()).collect())
    }
}

/// The positions an instance-dependent prompt (SMoP's router, IDPG's and LPT's generators) may
/// read in a pass with `labels` [b, t] (right-aligned to the ids when shorter, as the loss
/// takes them): per row, the attended positions before the first loss target, a target being
/// a position i > a with labels[i] != -100, a = the row's first attended position (1 = read).
///
/// Why: reading a target lets the prompt see the answer it is scored on (the loss at every
/// earlier position then depends on later tokens), and generation, which has only the prompt,
/// would condition differently than training. Reading only the leading non-target run is what
/// `generate` reads (its prompt), and also keeps a later user turn of a chat from reaching an
/// earlier answer. Position a itself is never a target (nothing before it predicts it), so
/// every row reads at least one position: on plain text (every label a target) the prompt
/// conditions on the first token alone.
pub fn prompt_context_mask(mask: Option<&[Vec<u8>]>, labels: &[Vec<i64>], b: usize, t: usize) -> Result<Vec<Vec<u8>>> {
    if labels.len() != b || labels.iter().any(|r| r.len() > t) {
        return Err(Error::arg(
            "labels",
            format!("{b} rows of at most {t} values (the shape of inputIds)"),
            format!("{} rows", labels.len()),
        ));
    }
    Ok((0..b)
        .map(|r| {
            let attended = |i: usize| mask.is_none_or(|m| m[r][i] != 0);
            let label = |i: usize| (i + labels[r].len()).checked_sub(t).map_or(super::loss::IGNORE_INDEX, |j| labels[r][j]);
            let first = (0..t).find(|&i| attended(i)).unwrap_or(t);
            let end = (first + 1..t).find(|&i| label(i) != super::loss::IGNORE_INDEX).unwrap_or(t);
            (0..t).map(|i| u8::from(attended(i) && i < end)).collect()
        })
        .collect())
}

/// The additive bias of a masked attention entry in `dtype`: its most negative finite value.
pub fn masked_value(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::MIN,
        DType::F16 => -65504.0,
        _ => f32::MIN as f64,
    }
}

/// The segment of key positions that every packed example attends (virtual tokens, prefixes).
pub const SHARED_SEGMENT: u32 = u32::MAX;

/// `Batch::attention_bias` for the last `t` of `past_len + t` positions (the queries), with
/// a key mask [b, past_len + t] (None = all ones) and key segments [b, past_len + t] (None:
/// one example per row; a query attends keys of its own segment or of `SHARED_SEGMENT`).
/// Adapters that add positions (virtual tokens, key prefixes) call it with the mask widened
/// by ones, as PEFT widens it, and the segments by shared ones (`Batch::key_segments`).
pub fn attention_bias(
    mask: Option<&[Vec<u8>]>,
    segments: Option<&[Vec<u32>]>,
    b: usize,
    t: usize,
    past_len: usize,
    window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let kv = past_len + t;
    let min = masked_value(dtype);
    let mut bias = vec![0f64; b * t * kv];
    for r in 0..b {
        for i in 0..t {
            for j in 0..kv {
                let padded = mask.is_some_and(|m| m[r][j] == 0);
                let other_example = segments.is_some_and(|s| s[r][j] != SHARED_SEGMENT && s[r][j] != s[r][past_len + i]);
                // transformers' `sliding_window_overlay`: key j is seen by query q iff q - j < window.
                let outside_window = window.is_some_and(|w| past_len + i >= j + w);
                if j > past_len + i || padded || other_example || outside_window {
                    bias[(r * t + i) * kv + j] = min;
                }
            }
        }
    }
    Ok(Tensor::from_vec(bias, (b, 1, t, kv), device)?.to_dtype(dtype)?)
}
