// Basic types shared by the whole core.
#pragma once
#include <cstdint>
#include <vector>

namespace pyserve {

using SeqId = int32_t;    // dense id of a request inside the core (reused after release)
using BlockId = int32_t;  // index of a KV block in the GPU or CPU pool
using TokenId = int32_t;

constexpr BlockId kNoBlock = -1;

enum class Status : int8_t { kWaiting = 0, kRunning = 1, kSwapped = 2, kFinished = 3 };
enum class FinishReason : int8_t { kNone = 0, kStop = 1, kLength = 2, kAbort = 3 };

const char* finish_reason_name(FinishReason r);
const char* status_name(Status s);

}  // namespace pyserve
