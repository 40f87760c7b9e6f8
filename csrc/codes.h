// The small integers that travel in the op schemas. Their one Python twin is
// vae_fused/_ops.py (RECON_MODES, REDUCTIONS); tests/test_codes.py passes every
// code of that table through the op, so the two cannot drift apart unnoticed.
#pragma once

namespace vae_fused {

enum ReconMode : int { kBce = 0, kBceLogits = 1, kMse = 2, kCbce = 3, kL1 = 4 };
enum Reduction : int { kNone = 0, kMean = 1, kSum = 2, kBatchMean = 3 };

// The names the Python API uses, for error messages.
constexpr const char* kReconModeNames[] = {"bce", "bce_logits", "mse", "cbce", "l1"};

constexpr bool is_recon_mode(long long m) { return m >= kBce && m <= kL1; }
constexpr bool is_reduction(long long r) { return r >= kNone && r <= kBatchMean; }

// Modes whose inputs are probabilities: a recon_x or target outside [0, 1]
// (NaN included) is an error for them, as in F.binary_cross_entropy.
constexpr bool takes_probabilities(int mode) { return mode == kBce || mode == kCbce; }
// Modes that accept a learned log-scale of the likelihood (recon_logvar).
constexpr bool takes_log_scale(int mode) { return mode == kL1 || mode == kMse; }

}  // namespace vae_fused
