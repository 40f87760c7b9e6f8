// The small integers that travel in the op schema. vae_fused/_ops.py mirrors
// them (RECON_MODES, REDUCTIONS); keep the two in step.
#pragma once

namespace vae_fused {

enum ReconMode : int { kBce = 0, kBceLogits = 1, kMse = 2, kCbce = 3 };
enum Reduction : int { kNone = 0, kMean = 1, kSum = 2, kBatchMean = 3 };

}  // namespace vae_fused
