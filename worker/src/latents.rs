//! Packed latents as stored objects: a safetensors file with one f32 tensor named `latents` of
//! shape `(1, tokens, features)` (diffusers' packed layout, `features` = 4 × latent channels).
//!
//! Used for a job's initial latents (like diffusers' `latents=`), a chain turn's carried context
//! latent, and the output latent a worker stores when `keep_latent` is set.

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// Name of the tensor inside the file.
pub const TENSOR_NAME: &str = "latents";

#[derive(Debug, thiserror::Error)]
pub enum LatentError {
    #[error("latents are not a valid safetensors file: {0}")]
    Format(#[from] safetensors::SafeTensorError),
    #[error("latents file has no tensor named {TENSOR_NAME:?} (found: {found})")]
    Missing { found: String },
    #[error("latents must be f32; the file holds {0:?}")]
    Dtype(Dtype),
    #[error("{len} latent values do not split into tokens of {features} features")]
    Shape { len: usize, features: usize },
}

/// Serializes packed latents (`data.len()` a multiple of `features`).
pub fn encode(data: &[f32], features: usize) -> Result<Vec<u8>, LatentError> {
    if features == 0 || !data.len().is_multiple_of(features) {
        return Err(LatentError::Shape {
            len: data.len(),
            features,
        });
    }
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    // (1, tokens, features): the packed layout the pipeline consumes.
    let shape = vec![1, data.len() / features, features];
    let view = TensorView::new(Dtype::F32, shape, &bytes)?;
    Ok(safetensors::serialize([(TENSOR_NAME, view)], None)?)
}

/// The packed values of a latents file, in row-major order.
pub fn decode(bytes: &[u8]) -> Result<Vec<f32>, LatentError> {
    let file = SafeTensors::deserialize(bytes)?;
    let view = file.tensor(TENSOR_NAME).map_err(|_| LatentError::Missing {
        found: file.names().join(", "),
    })?;
    if view.dtype() != Dtype::F32 {
        return Err(LatentError::Dtype(view.dtype()));
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_values_and_shape() {
        let data: Vec<f32> = (0..128).map(|i| i as f32 * 0.5 - 3.0).collect();
        let bytes = encode(&data, 64).expect("encode");
        let file = SafeTensors::deserialize(&bytes).expect("valid file");
        assert_eq!(
            file.tensor(TENSOR_NAME).expect("tensor").shape(),
            [1, 2, 64]
        );
        assert_eq!(decode(&bytes).expect("decode"), data);
    }

    #[test]
    fn bad_inputs_say_what_is_wrong() {
        assert!(matches!(
            encode(&[1.0; 10], 64),
            Err(LatentError::Shape { .. })
        ));
        assert!(matches!(
            decode(b"not safetensors"),
            Err(LatentError::Format(_))
        ));
        let other = safetensors::serialize(
            [(
                "x",
                TensorView::new(Dtype::F32, vec![1], &[0, 0, 0, 0]).expect("view"),
            )],
            None,
        )
        .expect("serialize");
        let err = decode(&other).expect_err("no latents tensor");
        assert!(err.to_string().contains("found: x"), "{err}");
    }
}
