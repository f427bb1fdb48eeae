/* The plain draw's pass over a block of logits (trtbuild/runtime/draw.py), fused into one call.
 *
 * torch needs five passes for it (the max, subtract, scale, exp2, group sums), each a dispatch of a few
 * microseconds and a walk over the block; this is one call that reads the block twice while it is in the
 * cache. It is compiled on first use by trtbuild/runtime/native.py; without a C compiler the torch ops run
 * instead (the same quantities, rounded differently).
 *
 * For each row r and each block of `block` columns (the last may be narrower):
 *   top[r, b]  = the block's max (NaN if the block holds a NaN, as torch's amax)
 *   x[r, j]    = 2 ** ((x[r, j] - top[r, b]) * scale[r])     in place, unnormalised probabilities
 *   sums[r, g] = the sum of x[r, j] over each `group` columns (blocks are whole groups but the last)
 *
 * 2 ** y for y <= 0: y = n + f with n an integer (rounding by adding 1.5 * 2^23) and f in [-1/2, 1/2];
 * 2 ** f is a degree-6 polynomial (Chebyshev interpolation of 2^f on [-1/2, 1/2]: 2.5e-9 relative in
 * exact arithmetic, 1.03e-7 in float32, under one ulp); 2 ** n goes into the exponent bits. y below -126
 * (a banned token's -inf among them) gives 0, as a float32 exp2 nearly does (it gives subnormals there).
 * In GCC vector extensions (gcc and clang; 8 floats: AVX2 where the CPU has it), no libm.
 */
#include <stdint.h>
#include <string.h>

#define LANES 8
typedef float f8 __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t i8 __attribute__((vector_size(LANES * sizeof(float))));

static inline f8 blend(i8 mask, f8 yes, f8 no) { return (f8)(((i8)yes & mask) | ((i8)no & ~mask)); }

/* n < LANES values from x, the other lanes -inf (a max ignores them, exp2 gives 0) */
static inline f8 load_tail(const float *x, int64_t n)
{
    f8 v;
    for (int k = 0; k < LANES; k++)
        v[k] = k < n ? x[k] : -__builtin_inff();
    return v;
}

static inline f8 exp2_nonpositive(f8 y)
{
    const f8 round = (f8){0} + 12582912.0f; /* 1.5 * 2^23: y + round holds y rounded to an integer in its low bits */
    f8 yc = blend(y < -127.0f, (f8){0} - 127.0f, y); /* NaN stays NaN: the comparison is false */
    f8 t = yc + round;
    f8 f = yc - (t - round);
    f8 two_n = (f8)(((i8)t - 0x4B400000 + 127) << 23); /* n + 127 in the exponent field: 2 ** n */
    f8 p = (f8){0} + 1.546144457e-04f;
    p = p * f + 1.340042818e-03f;
    p = p * f + 9.618056679e-03f;
    p = p * f + 5.550327227e-02f;
    p = p * f + 2.402265092e-01f;
    p = p * f + 6.931472067e-01f;
    p = p * f + 1.0f;
    return blend(y < -126.0f, (f8){0}, p * two_n);
}

static float block_max(const float *x, int64_t width)
{
    f8 best = (f8){0} - __builtin_inff(), v;
    i8 nan = {0};
    int64_t j = 0;
    for (; j + LANES <= width; j += LANES) {
        memcpy(&v, x + j, sizeof v);
        best = blend(v > best, v, best);
        nan |= v != v;
    }
    if (j < width) {
        v = load_tail(x + j, width - j);
        best = blend(v > best, v, best);
        nan |= v != v;
    }
    float m = -__builtin_inff();
    int32_t any_nan = 0;
    for (int k = 0; k < LANES; k++) {
        m = best[k] > m ? best[k] : m;
        any_nan |= nan[k];
    }
    return any_nan ? __builtin_nanf("") : m;
}

/* 2 ** ((x - m) * s) in place over [x, x + width), and its sum */
static float exp2_sum(float *x, int64_t width, float m, float s)
{
    f8 acc0 = {0}, acc1 = {0}, v0, v1;
    int64_t j = 0;
    for (; j + 2 * LANES <= width; j += 2 * LANES) { /* two vectors a turn: the polynomial's latency overlaps */
        memcpy(&v0, x + j, sizeof v0);
        memcpy(&v1, x + j + LANES, sizeof v1);
        v0 = exp2_nonpositive((v0 - m) * s);
        v1 = exp2_nonpositive((v1 - m) * s);
        memcpy(x + j, &v0, sizeof v0);
        memcpy(x + j + LANES, &v1, sizeof v1);
        acc0 += v0;
        acc1 += v1;
    }
    for (; j < width; j += LANES) {
        int64_t n = width - j < LANES ? width - j : LANES;
        v0 = exp2_nonpositive((load_tail(x + j, n) - m) * s);
        for (int k = 0; k < n; k++)
            x[j + k] = v0[k];
        acc0 += v0;
    }
    acc0 += acc1;
    float total = 0.0f;
    for (int k = 0; k < LANES; k++)
        total += acc0[k];
    return total;
}

/* The caller keeps `block` a multiple of `group`, so that sums[r, j / group] is column j's group. */
void draw_blocks(float *x, int64_t rows, int64_t width, int64_t stride, int64_t block, int64_t group,
                 const float *scale, float *top, float *sums)
{
    int64_t blocks = (width + block - 1) / block, groups = (width + group - 1) / group;
    for (int64_t r = 0; r < rows; r++) {
        float *row = x + r * stride;
        float s = scale[r];
        for (int64_t b = 0; b < blocks; b++) {
            int64_t start = b * block, end = start + block < width ? start + block : width;
            float m = block_max(row + start, end - start);
            top[r * blocks + b] = m;
            for (int64_t g = start; g < end; g += group)
                sums[r * groups + g / group] = exp2_sum(row + g, (g + group < end ? g + group : end) - g, m, s);
        }
    }
}

static float nan_to_num(float v)
{
    if (v != v)
        return 0.0f;
    if (v == __builtin_inff())
        return __FLT_MAX__;
    return v == -__builtin_inff() ? -__FLT_MAX__ : v;
}

/* The draw across blocks (PlainDraw.tokens, the same float64 steps), one row at a time:
 *   weight[b] = 2 ** ((maxima[r, b] - the row's max) * scale[r])     each block's share, rescaled
 *   the first group whose cumulative weighted sum exceeds u[r] * the row's total, then the first column of
 *   that group whose cumulative probability (times its block's weight) exceeds what is left of the target.
 * maxima [rows, blocks] and sums [rows, groups] are contiguous; probs[i] is piece i of the probabilities
 * ([rows, width], row stride strides[i]), every piece `width` columns wide but the last. A row without a
 * usable distribution (NaN, or nothing allowed) takes the first maximum of its probabilities with NaN as 0
 * (torch.nan_to_num(...).argmax()) and ok[r] = 0. */
void draw_tokens(int64_t rows, int64_t blocks, int64_t block, int64_t groups, int64_t group, int64_t vocab,
                 const float *maxima, const float *sums, const float *const *probs, const int64_t *strides,
                 int64_t pieces, int64_t width, const double *scale, const double *u, int64_t *picked,
                 uint8_t *ok)
{
    double weight[blocks], cum[groups], inner[group];
    for (int64_t r = 0; r < rows; r++) {
        const float *row_max = maxima + r * blocks, *row_sums = sums + r * groups;
        double m = row_max[0];
        for (int64_t b = 1; b < blocks; b++)
            m = (row_max[b] > m || row_max[b] != row_max[b]) ? row_max[b] : m; /* NaN wins, as numpy's max */
        for (int64_t b = 0; b < blocks; b++)
            weight[b] = __builtin_exp2(((double)row_max[b] - m) * scale[r]);
        double total = 0.0;
        for (int64_t g = 0; g < groups; g++) {
            double scaled = row_sums[g] * weight[g * group / block];
            cum[g] = total += __builtin_isfinite(scaled) ? scaled : 0.0; /* such groups contribute nothing */
        }
        ok[r] = total > 0;
        if (!ok[r]) {
            float best = 0.0f;
            int64_t at = -1;
            for (int64_t i = 0; i < pieces; i++) {
                int64_t w = i + 1 < pieces ? width : vocab - i * width;
                for (int64_t j = 0; j < w; j++) {
                    float v = nan_to_num(probs[i][r * strides[i] + j]);
                    if (at < 0 || v > best) {
                        best = v;
                        at = i * width + j;
                    }
                }
            }
            picked[r] = at;
            continue;
        }
        double target = u[r] * total;
        int64_t g = 0;
        while (g < groups - 1 && cum[g] <= target) /* the first group past the target */
            g++;
        int64_t first = g * group, count = vocab - first < group ? vocab - first : group, j = 0;
        const float *p = probs[first / width] + r * strides[first / width] + first % width;
        double w = weight[first / block];
        inner[0] = p[0];
        for (j = 1; j < count; j++)
            inner[j] = inner[j - 1] + p[j];
        /* float64 sums of float32 terms may round a hair past the group's total: stay inside the group */
        double rest = target - (g ? cum[g - 1] : 0.0), last = __builtin_nextafter(inner[count - 1] * w, 0.0);
        rest = rest < last ? rest : last;
        for (j = 0; j < count - 1 && inner[j] * w <= rest; j++)
            ;
        picked[r] = first + j;
    }
}
