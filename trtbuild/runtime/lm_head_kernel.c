/* The LM head's matmul for a few rows (trtbuild/runtime/lm_head.py): out = x W^T for one block of
 * vocabulary columns, from a copy of W packed in panels of 8 columns.
 *
 * The decode step's LM head multiplies a handful of rows by a [V, H] weight that does not fit in cache:
 * at 1 row a memory-bound GEMV, at 8 rows on these CPUs still mostly memory, yet MKL and oneDNN run it
 * at 30-40% of the FMA peak (lm_head.py has the table). Here every row of a tile of up to 8 rows reads each
 * weight once from a panel: packed[p][k][0:8] = W[8p:8p+8, k], so a panel is one sequential stream.
 * Tiles: rows x panels at once, chosen to keep 8 or more independent FMA chains (their 4-cycle latency
 * hidden) and every accumulator in the 16 AVX2 registers: 1 or 2 rows x 8 or 4 panels, 3-4 x 2, 5-8 x 1;
 * past 8 rows, 8 rows x 1 panel.
 *
 * Each output is sum_k x[r, k] * W[n, k], accumulated over k in order with one FMA per term, whatever the
 * tile: a row's logits are the same bits at any batch size and any position in the batch.
 */
#include <stdint.h>
#include <string.h>

typedef float f8 __attribute__((vector_size(8 * sizeof(float))));

static inline __attribute__((always_inline)) void tile(const float *x, int64_t k_dim, const float *packed,
                                                       float *out, int64_t out_stride, const int R, const int P)
{
    f8 acc[8][8];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int p = 0; p < P; p++)
            acc[r][p] = (f8){0};
    for (int64_t k = 0; k < k_dim; k++) {
        f8 b[8];
#pragma GCC unroll 8
        for (int p = 0; p < P; p++)
            memcpy(&b[p], packed + (p * k_dim + k) * 8, sizeof b[p]);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            float a = x[r * k_dim + k];
#pragma GCC unroll 8
            for (int p = 0; p < P; p++)
                acc[r][p] += a * b[p];
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int p = 0; p < P; p++)
            memcpy(out + r * out_stride + p * 8, &acc[r][p], sizeof acc[r][p]);
}

#define TILES(R, P)                                                                                   \
    for (; p + P <= panels; p += P)                                                                   \
        tile(x, k_dim, packed + p * k_dim * 8, out + p * 8, out_stride, R, P);                       \
    for (; p < panels; p++)                                                                           \
        tile(x, k_dim, packed + p * k_dim * 8, out + p * 8, out_stride, R, 1);

#define ROW_BLOCK 128 /* 128 rows of x (128 KB at H 256) stay in L2 while every panel passes them */
#define ONE_PANEL(R) tile(x + r * k_dim, k_dim, packed + p * k_dim * 8, out + r * out_stride + p * 8, out_stride, R, 1)

/* x [rows, k_dim] contiguous; packed [width / 8][k_dim][8]; out [rows, width] with row stride out_stride.
 * width is a multiple of 8. Past 8 rows, each panel serves every 8 rows of a ROW_BLOCK in turn while it is
 * in L1: the weight streams from memory once per ROW_BLOCK rows (a prompt scored at 512 positions: 4 times;
 * without row blocks x falls out of L2 and 512 rows ran 11% slower than oneDNN, with them level). */
void lm_head_block(const float *x, int64_t rows, int64_t k_dim, const float *packed, int64_t width, float *out,
                   int64_t out_stride)
{
    int64_t panels = width / 8, p = 0;
    switch (rows) {
    case 1: TILES(1, 8) return;
    case 2: TILES(2, 4) return;
    case 3: TILES(3, 2) return;
    case 4: TILES(4, 2) return;
    case 5: TILES(5, 1) return;
    case 6: TILES(6, 1) return;
    case 7: TILES(7, 1) return;
    case 8: TILES(8, 1) return;
    }
    for (int64_t first = 0; first < rows; first += ROW_BLOCK) /* x's rows in L2, a panel in L1 */
        for (p = 0; p < panels; p++)
            for (int64_t r = first, end = first + ROW_BLOCK < rows ? first + ROW_BLOCK : rows; r < end; r += 8)
                switch (end - r < 8 ? end - r : 8) {
            case 1: ONE_PANEL(1); break;
            case 2: ONE_PANEL(2); break;
            case 3: ONE_PANEL(3); break;
            case 4: ONE_PANEL(4); break;
            case 5: ONE_PANEL(5); break;
            case 6: ONE_PANEL(6); break;
            case 7: ONE_PANEL(7); break;
            default: ONE_PANEL(8); break;
            }
}
