// Paged decode attention for CPUs: one query token per sequence, K/V read in
// place from the head-major paged cache [kv_heads, num_blocks, block_size, head_dim].
//
// The pure-PyTorch path has to gather each sequence's blocks into a contiguous
// copy before its matmuls, and then runs about fifteen small ops per layer. Here
// one parallel loop over (sequence, kv head) converts each block to float once,
// scores it against the whole query group, and accumulates the values, so the
// cache is read once and nothing is written but the output.

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "vec.h"

namespace nanovllm {
namespace {

// One block's rows scored against a query group (generic: any head_dim, any ISA).
template <typename T>
struct GenericBlock {
  std::vector<float> rows_f32;
  explicit GenericBlock(int64_t block_elems) : rows_f32(block_elems) {}

  void score(const T* rows, int64_t n, const float* queries, int64_t group, int64_t head_dim, float* scores,
             int64_t stride) {
    load_floats(rows, rows_f32.data(), n * head_dim);
    for (int64_t g = 0; g < group; ++g)
      for (int64_t r = 0; r < n; ++r) scores[g * stride + r] = dot(queries + g * head_dim, &rows_f32[r * head_dim], head_dim);
  }

  void accumulate(const T* rows, int64_t n, const float* probs, int64_t group, int64_t head_dim, float* acc,
                  int64_t stride) {
    load_floats(rows, rows_f32.data(), n * head_dim);
    for (int64_t g = 0; g < group; ++g) {
      float* a = acc + g * head_dim;
      for (int64_t r = 0; r < n; ++r) {
        const float p = probs[g * stride + r];
        const float* value = &rows_f32[r * head_dim];
#pragma omp simd
        for (int64_t d = 0; d < head_dim; ++d) a[d] += p * value[d];
      }
    }
  }
};

// One block's rows scored against a query group, V::kWidth * CHUNKS = head_dim
// floats a row. A score is a dot product whose horizontal sum costs as much as
// its multiplies at head_dim 64, so rows go eight at a time: eight independent
// sums (enough to keep both FMA pipes busy) reduced across together. The values
// are accumulated with a group's output row held in registers through the block.
template <typename T, typename V, int CHUNKS>
struct VectorBlock {
  static constexpr int64_t kDim = V::kWidth * CHUNKS;
  static constexpr int kHeld = CHUNKS < 8 ? CHUNKS : 8;  // output vectors held in registers at once
  using Reg = typename V::Reg;
  std::vector<float> rows_f32;  // a 16-bit block converted once, not once per query of the group
  explicit VectorBlock(int64_t block_elems) : rows_f32(std::is_same_v<T, float> ? 0 : block_elems) {}

  const float* as_floats(const T* rows, int64_t n) {
    if constexpr (std::is_same_v<T, float>) {
      return rows;
    } else {
      for (int64_t i = 0; i < n * kDim; i += V::kWidth) V::store(&rows_f32[i], V::load(rows + i));  // F16C / shifts
      return rows_f32.data();
    }
  }

  static void score8(const float* rows, const float* query, float* out) {
    Reg sums[8];
    const Reg first = V::load(query);
    for (int r = 0; r < 8; ++r) sums[r] = V::mul(first, V::load(rows + r * kDim));
    for (int c = 1; c < CHUNKS; ++c) {
      const Reg chunk = V::load(query + c * V::kWidth);
      for (int r = 0; r < 8; ++r) sums[r] = V::fmadd(chunk, V::load(rows + r * kDim + c * V::kWidth), sums[r]);
    }
    V::store_sums8(sums, out);
  }

  static float score1(const float* row, const float* query) {
    Reg sum = V::mul(V::load(query), V::load(row));
    for (int c = 1; c < CHUNKS; ++c) sum = V::fmadd(V::load(query + c * V::kWidth), V::load(row + c * V::kWidth), sum);
    return V::sum(sum);
  }

  void score(const T* block_rows, int64_t n, const float* queries, int64_t group, int64_t, float* scores,
             int64_t stride) {
    const float* rows = as_floats(block_rows, n);
    for (int64_t g = 0; g < group; ++g) {
      const float* query = queries + g * kDim;
      float* out = scores + g * stride;
      int64_t r = 0;
      for (; r + 8 <= n; r += 8) score8(rows + r * kDim, query, out + r);
      for (; r < n; ++r) out[r] = score1(rows + r * kDim, query);
    }
  }

  void accumulate(const T* block_rows, int64_t n, const float* probs, int64_t group, int64_t, float* acc,
                  int64_t stride) {
    const float* rows = as_floats(block_rows, n);
    for (int64_t g = 0; g < group; ++g) {
      for (int first = 0; first < CHUNKS; first += kHeld) {
        float* out = acc + g * kDim + first * V::kWidth;
        Reg sums[kHeld];
        for (int c = 0; c < kHeld; ++c) sums[c] = V::load(out + c * V::kWidth);
        for (int64_t r = 0; r < n; ++r) {
          const Reg p = V::broadcast(probs[g * stride + r]);
          const float* value = rows + r * kDim + first * V::kWidth;
          for (int c = 0; c < kHeld; ++c) sums[c] = V::fmadd(p, V::load(value + c * V::kWidth), sums[c]);
        }
        for (int c = 0; c < kHeld; ++c) V::store(out + c * V::kWidth, sums[c]);
      }
    }
  }
};

// Softmax of each of the group's score rows in place; returns nothing but the
// rows' 1/sum, applied to the output at the end instead of to every score.
inline void softmax_rows(float* scores, int64_t group, int64_t length, float* inverse_sums) {
  for (int64_t g = 0; g < group; ++g) {
    float* row = scores + g * length;
    inverse_sums[g] = 1.f / exp_shifted(row, length, max_of(row, length));
  }
}

// Q: the query's and output's type; T: the cache's (a float32 model may keep a 16-bit cache)
template <typename Q, typename T, typename Block>
void decode(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
            const at::Tensor& block_tables, const at::Tensor& context_lens, at::Tensor& out, float scale,
            int64_t window) {
  const int64_t num_seqs = query.size(0), num_heads = query.size(1), head_dim = query.size(2);
  const int64_t kv_heads = k_cache.size(0), num_blocks = k_cache.size(1), block_size = k_cache.size(2);
  const int64_t group = num_heads / kv_heads, table_width = block_tables.size(1);
  const Q* q = query.data_ptr<Q>();
  const T* k = k_cache.data_ptr<T>();
  const T* v = v_cache.data_ptr<T>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int32_t* lens = context_lens.data_ptr<int32_t>();
  Q* o = out.data_ptr<Q>();
  const int64_t block_elems = block_size * head_dim, head_elems = num_blocks * block_elems;

  at::parallel_for(0, num_seqs * kv_heads, 1, [&](int64_t begin, int64_t end) {
    Block block(block_elems);
    std::vector<float> queries(group * head_dim), acc(group * head_dim), inverse_sums(group), scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t seq = item / kv_heads, head = item % kv_heads, context_len = lens[seq];
      const int32_t* table = tables + seq * table_width;
      const int64_t first_query = (seq * num_heads + head * group) * head_dim;
      if (context_len <= 0) {  // nothing to attend to: a zero output rather than a read of row[-1]
        std::fill(o + first_query, o + first_query + group * head_dim, static_cast<Q>(0.f));
        continue;
      }
      // the keys the query (at context_len - 1) sees: all, or the window's last ones;
      // blocks wholly before the window are never read
      const int64_t first = window > 0 ? std::max<int64_t>(0, context_len - window) : 0;
      const int64_t length = context_len - first;
      load_floats(q + first_query, queries.data(), group * head_dim);
      for (auto& x : queries) x *= scale;
      scores.resize(group * length);
      const T* k_head = k + head * head_elems;
      const T* v_head = v + head * head_elems;

      // blocks sit at random places in the cache, so the hardware prefetcher cannot
      // see the next one coming; without this, loads stall on every block start
      const int64_t last_block = (context_len - 1) / block_size;
      for (int64_t position = first; position < context_len;) {
        const int64_t index = position / block_size, offset = position % block_size;
        const int64_t rows = std::min(block_size - offset, context_len - position);
        prefetch(k_head + table[std::min(index + 1, last_block)] * block_elems, block_elems * sizeof(T));
        block.score(k_head + table[index] * block_elems + offset * head_dim, rows, queries.data(), group, head_dim,
                    &scores[position - first], length);
        position += rows;
      }
      softmax_rows(scores.data(), group, length, inverse_sums.data());
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t position = first; position < context_len;) {
        const int64_t index = position / block_size, offset = position % block_size;
        const int64_t rows = std::min(block_size - offset, context_len - position);
        prefetch(v_head + table[std::min(index + 1, last_block)] * block_elems, block_elems * sizeof(T));
        block.accumulate(v_head + table[index] * block_elems + offset * head_dim, rows, &scores[position - first],
                         group, head_dim, acc.data(), length);
        position += rows;
      }

      for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < head_dim; ++d)
          o[first_query + g * head_dim + d] = static_cast<Q>(acc[g * head_dim + d] * inverse_sums[g]);
    }
  });
}

template <typename Q, typename T>
void dispatch_head_dim(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                       const at::Tensor& block_tables, const at::Tensor& context_lens, at::Tensor& out, float scale,
                       int64_t window, bool generic_only) {
  // head_dim 32 to 256 (Gemma 3's) in whole vectors; other sizes take the portable loops
#if defined(NANOVLLM_NATIVE_FLOATS)
  using V = NativeFloats;
  if (!generic_only) {
    switch (query.size(2) % V::kWidth ? 0 : query.size(2) / V::kWidth) {
      case 2: return decode<Q, T, VectorBlock<T, V, 2>>(query, k_cache, v_cache, block_tables, context_lens, out, scale, window);
      case 4: return decode<Q, T, VectorBlock<T, V, 4>>(query, k_cache, v_cache, block_tables, context_lens, out, scale, window);
      case 8: return decode<Q, T, VectorBlock<T, V, 8>>(query, k_cache, v_cache, block_tables, context_lens, out, scale, window);
      case 16: return decode<Q, T, VectorBlock<T, V, 16>>(query, k_cache, v_cache, block_tables, context_lens, out, scale, window);
      case 32: return decode<Q, T, VectorBlock<T, V, 32>>(query, k_cache, v_cache, block_tables, context_lens, out, scale, window);
      default: break;
    }
  }
#endif
  decode<Q, T, GenericBlock<T>>(query, k_cache, v_cache, block_tables, context_lens, out, scale, window);
}

}  // namespace

// The new tokens' K and V written to their slots of the head-major cache, in one
// operator: the torch path takes two index_copy_ calls and four views per layer,
// which at one token per step cost more than the copy.
void store_kv(const at::Tensor& new_key, const at::Tensor& new_value, at::Tensor& k_cache, at::Tensor& v_cache,
              const at::Tensor& slot_mapping) {
  // a float32 model may keep a 16-bit cache: the new tokens rounded to it first
  const at::Tensor key = new_key.to(k_cache.scalar_type()), value = new_value.to(v_cache.scalar_type());
  TORCH_CHECK(key.dim() == 3 && value.dim() == 3 && key.sizes() == value.sizes(), "store_kv: key/value [tokens, kv_heads, head_dim]");
  TORCH_CHECK(key.stride(2) == 1 && value.stride(2) == 1, "store_kv: head_dim must be contiguous");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.sizes() == v_cache.sizes(),
              "store_kv: contiguous caches [kv_heads, blocks, block_size, head_dim]");
  TORCH_CHECK(v_cache.scalar_type() == k_cache.scalar_type(), "store_kv: K and V cache dtypes differ");
  const int64_t tokens = key.size(0), kv_heads = key.size(1), head_dim = key.size(2);
  TORCH_CHECK(k_cache.size(0) == kv_heads && k_cache.size(3) == head_dim, "store_kv: cache and key shapes differ");
  TORCH_CHECK(slot_mapping.numel() == tokens, "store_kv: one slot per token");
  const int64_t slots_per_head = k_cache.size(1) * k_cache.size(2), item = key.element_size();
  const at::Tensor slots = slot_mapping.to(at::kLong).contiguous();
  const int64_t* slot = slots.data_ptr<int64_t>();
  const char* k = static_cast<const char*>(key.data_ptr());
  const char* v = static_cast<const char*>(value.data_ptr());
  char* kc = static_cast<char*>(k_cache.data_ptr());
  char* vc = static_cast<char*>(v_cache.data_ptr());
  for (int64_t t = 0; t < tokens; ++t) {
    TORCH_CHECK(slot[t] < slots_per_head, "store_kv: slot ", slot[t], " is outside the cache");
    if (slot[t] < 0) continue;  // padding, as in the GPU store
    for (int64_t h = 0; h < kv_heads; ++h) {
      const int64_t to = (h * slots_per_head + slot[t]) * head_dim * item;
      std::memcpy(kc + to, k + (t * key.stride(0) + h * key.stride(1)) * item, head_dim * item);
      std::memcpy(vc + to, v + (t * value.stride(0) + h * value.stride(1)) * item, head_dim * item);
    }
  }
}

at::Tensor paged_decode_attention(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                                  int64_t window, bool generic_only) {
  TORCH_CHECK(query.dim() == 3 && k_cache.dim() == 4, "query [seqs, heads, head_dim], cache [kv_heads, blocks, block, head_dim]");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "the KV cache must be contiguous");
  TORCH_CHECK(v_cache.scalar_type() == k_cache.scalar_type(), "K and V cache dtypes differ");
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && context_lens.scalar_type() == at::kInt,
              "block_tables and context_lens must be int32");
  TORCH_CHECK(query.size(1) % k_cache.size(0) == 0, "heads must be a multiple of kv heads");
  TORCH_CHECK(query.size(2) == k_cache.size(3), "query and cache head_dim differ");
  const at::Tensor q = query.contiguous();
  const at::Tensor tables = block_tables.contiguous();
  const at::Tensor lens = context_lens.contiguous();
  at::Tensor out = at::empty_like(q);
  // the query's dtype and the cache's; no double: the AVX-512 code has no double loads, and no model runs in double
  const auto type = q.scalar_type(), cache_type = k_cache.scalar_type();
  if (type == at::kFloat && cache_type == at::kFloat) {
    dispatch_head_dim<float, float>(q, k_cache, v_cache, tables, lens, out, scale, window, generic_only);
  } else if (type == at::kFloat && cache_type == at::kHalf) {
    dispatch_head_dim<float, at::Half>(q, k_cache, v_cache, tables, lens, out, scale, window, generic_only);
  } else if (type == at::kFloat && cache_type == at::kBFloat16) {
    dispatch_head_dim<float, at::BFloat16>(q, k_cache, v_cache, tables, lens, out, scale, window, generic_only);
  } else if (type == at::kBFloat16 && cache_type == at::kBFloat16) {
    dispatch_head_dim<at::BFloat16, at::BFloat16>(q, k_cache, v_cache, tables, lens, out, scale, window, generic_only);
  } else if (type == at::kHalf && cache_type == at::kHalf) {
    dispatch_head_dim<at::Half, at::Half>(q, k_cache, v_cache, tables, lens, out, scale, window, generic_only);
  } else {
    TORCH_CHECK(false, "paged_decode_attention: a ", type, " query on a ", cache_type, " cache is not supported");
  }
  return out;
}

}  // namespace nanovllm
