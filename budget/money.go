package budget

import (
	"math"
	"strconv"
)

// MicroUSD is an amount of money in millionths of a US dollar. Budgets,
// prices and counters all use it, so sums are exact integers.
type MicroUSD int64

// MaxMicroUSD is the largest representable amount; arithmetic saturates at it.
const MaxMicroUSD = MicroUSD(math.MaxInt64)

// USD converts dollars to micro-USD, rounding to the nearest micro-dollar.
// Values beyond the representable range saturate; NaN and negative values
// give 0.
func USD(dollars float64) MicroUSD {
	switch {
	case !(dollars > 0): // also NaN
		return 0
	case dollars*1e6 >= math.MaxInt64:
		return MaxMicroUSD
	}
	return MicroUSD(math.Round(dollars * 1e6))
}

// USD returns the amount in dollars, for display and the wire API.
func (m MicroUSD) USD() float64 { return float64(m) / 1e6 }

// String renders the amount as dollars with six decimals, e.g. "$12.345678".
func (m MicroUSD) String() string {
	neg := m < 0
	u := uint64(m)
	if neg {
		u = -u
	}
	frac := strconv.FormatUint(u%1e6, 10)
	b := make([]byte, 0, 24)
	if neg {
		b = append(b, '-')
	}
	b = append(b, '$')
	b = strconv.AppendUint(b, u/1e6, 10)
	b = append(b, '.')
	for range 6 - len(frac) {
		b = append(b, '0')
	}
	b = append(b, frac...)
	return string(b)
}
