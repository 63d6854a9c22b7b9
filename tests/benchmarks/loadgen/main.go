// loadgen: a gRPC load generator for abkit's benchmarks that varies the request body.
//
// h2load sends one fixed body, so every call asks for the same unit(s): after the first call a
// returning unit, whose exposure is already logged. loadgen builds every request's body on the
// fly (a few bytes of protobuf written by hand), so each call can ask for a new unit -- or cycle
// through a fixed pool of returning units -- at the cost of a Go client, not a Python one.
//
// It speaks gRPC over HTTP/2 cleartext (golang.org/x/net/http2, Debian's
// golang-golang-x-net-dev; no gRPC library needed): POST /abkit.v1.AssignmentService/<method>,
// a length-prefixed message, and the status from the grpc-status trailer. A call counts as ok
// only with grpc-status 0 and a well-formed reply; every other outcome is counted by code.
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o loadgen .
//	./loadgen -addr 127.0.0.1:50051 -method Assign -units new -prefix run1 -d 10s
//
// It prints one JSON object: requests, ok, errors by code, units asked for, seconds, rates and
// latency percentiles.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

type result struct {
	Method       string         `json:"method"`
	Units        string         `json:"units"`
	Batch        int            `json:"batch"`
	Requests     int64          `json:"requests"`
	OK           int64          `json:"ok"`
	Errors       int64          `json:"errors"`
	ErrorCodes   map[string]int `json:"error_codes"`
	UnitsAsked   int64          `json:"units_asked"`
	Seconds      float64        `json:"seconds"`
	RPS          float64        `json:"rps"`
	UnitsPerSec  float64        `json:"units_per_second"`
	P50Ms        float64        `json:"p50_ms"`
	P90Ms        float64        `json:"p90_ms"`
	P99Ms        float64        `json:"p99_ms"`
	P999Ms       float64        `json:"p999_ms"`
	Connections  int            `json:"connections"`
	StreamsPerCx int            `json:"streams_per_connection"`
	Rate         float64        `json:"rate"`
}

func varint(buf *bytes.Buffer, v uint64) {
	var tmp [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(tmp[:], v)
	buf.Write(tmp[:n])
}

// assignRequest is abkit.v1.AssignRequest{unit_id: unit, experiment_keys: [experiment]}.
func assignRequest(unit, experiment string) []byte {
	var b bytes.Buffer
	b.WriteByte(0x0a) // field 1, length-delimited: unit_id
	varint(&b, uint64(len(unit)))
	b.WriteString(unit)
	if experiment != "" {
		b.WriteByte(0x1a) // field 3, length-delimited: experiment_keys
		varint(&b, uint64(len(experiment)))
		b.WriteString(experiment)
	}
	return b.Bytes()
}

func frame(message []byte) []byte {
	out := make([]byte, 5+len(message))
	binary.BigEndian.PutUint32(out[1:5], uint32(len(message)))
	copy(out[5:], message)
	return out
}

type bodies struct {
	method, units, prefix, experiment string
	batch, pool                       int
	counter                           atomic.Int64
}

// next returns the framed body of the next call and how many units it asks for.
func (g *bodies) next() ([]byte, int) {
	i := g.counter.Add(1) - 1
	unit := func(k int64) string {
		if g.units == "returning" {
			k %= int64(g.pool)
		}
		return g.prefix + "-" + strconv.FormatInt(k, 10)
	}
	if g.method == "Assign" {
		return frame(assignRequest(unit(i), g.experiment)), 1
	}
	var b bytes.Buffer
	for k := 0; k < g.batch; k++ {
		msg := assignRequest(unit(i*int64(g.batch)+int64(k)), g.experiment)
		b.WriteByte(0x0a) // AssignBatchRequest field 1: repeated AssignRequest requests
		varint(&b, uint64(len(msg)))
		b.Write(msg)
	}
	return frame(b.Bytes()), g.batch
}

func client(addr string) *http.Client {
	transport := &http2.Transport{
		AllowHTTP: true, // h2c: dial plain TCP where the transport would dial TLS
		DialTLS: func(network, address string, _ *tls.Config) (net.Conn, error) {
			return net.Dial(network, address)
		},
		StrictMaxConcurrentStreams: true,
	}
	return &http.Client{Transport: transport, Timeout: 30 * time.Second}
}

// call sends one request and returns "" on success, else the error code.
func call(c *http.Client, url string, body []byte) string {
	req, err := http.NewRequestWithContext(context.Background(), "POST", url, bytes.NewReader(body))
	if err != nil {
		return "CLIENT"
	}
	req.Header.Set("content-type", "application/grpc")
	req.Header.Set("te", "trailers")
	resp, err := c.Do(req)
	if err != nil {
		return "TRANSPORT"
	}
	reply, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "TRANSPORT"
	}
	status := resp.Trailer.Get("grpc-status")
	if status == "" {
		status = resp.Header.Get("grpc-status") // a trailers-only answer (an error)
	}
	if status != "0" {
		if status == "" {
			return "NO_STATUS"
		}
		return "GRPC_" + status
	}
	if resp.StatusCode != 200 || len(reply) < 5 ||
		int(binary.BigEndian.Uint32(reply[1:5])) != len(reply)-5 {
		return "MALFORMED"
	}
	return ""
}

func percentile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return float64(sorted[i]) / float64(time.Millisecond)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "server host:port")
	method := flag.String("method", "Assign", "Assign or AssignBatch")
	batch := flag.Int("batch", 100, "units per AssignBatch call")
	units := flag.String("units", "new", "new: a new unit every time; returning: cycle a pool")
	pool := flag.Int("pool", 1000, "size of the pool of returning units")
	prefix := flag.String("prefix", "u", "unit id prefix (make it unique per run)")
	experiment := flag.String("experiment", "", "experiment key to ask for (empty: all)")
	connections := flag.Int("c", 4, "connections")
	streams := flag.Int("m", 16, "calls in flight per connection")
	duration := flag.Duration("d", 10*time.Second, "duration")
	requests := flag.Int64("n", 0, "stop after this many calls (0: run for the duration)")
	rate := flag.Float64("rate", 0, "target calls per second overall (0: as fast as possible)")
	flag.Parse()
	if *method != "Assign" && *method != "AssignBatch" {
		fmt.Fprintln(os.Stderr, "-method must be Assign or AssignBatch")
		os.Exit(2)
	}
	if *units != "new" && *units != "returning" {
		fmt.Fprintln(os.Stderr, "-units must be new or returning")
		os.Exit(2)
	}
	gen := &bodies{method: *method, units: *units, prefix: *prefix, experiment: *experiment,
		batch: *batch, pool: *pool}
	url := "http://" + *addr + "/abkit.v1.AssignmentService/" + *method
	clients := make([]*http.Client, *connections)
	for i := range clients {
		clients[i] = client(*addr)
	}
	var (
		mu        sync.Mutex
		latencies []time.Duration
		codes     = map[string]int{}
		issued    atomic.Int64
		ok, asked atomic.Int64
		wg        sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(*duration)
	workers := *connections * *streams
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(c *http.Client) {
			defer wg.Done()
			local := make([]time.Duration, 0, 4096)
			localCodes := map[string]int{}
			for {
				i := issued.Add(1) - 1
				if (*requests > 0 && i >= *requests) || time.Now().After(deadline) {
					break
				}
				var intended time.Time
				if *rate > 0 {
					intended = start.Add(time.Duration(float64(i) / *rate * 1e9))
					if wait := time.Until(intended); wait > 0 {
						time.Sleep(wait)
					}
				}
				body, n := gen.next()
				t0 := time.Now()
				if *rate > 0 && intended.Before(t0) {
					// Open loop: a call that could not leave on time (every worker busy) is
					// timed from when it was due, so queueing shows in the latency (no
					// coordinated omission).
					t0 = intended
				}
				code := call(c, url, body)
				if code != "" {
					localCodes[code]++
					continue
				}
				local = append(local, time.Since(t0))
				ok.Add(1)
				asked.Add(int64(n))
			}
			mu.Lock()
			latencies = append(latencies, local...)
			for k, v := range localCodes {
				codes[k] += v
			}
			mu.Unlock()
		}(clients[w%len(clients)])
	}
	wg.Wait()
	seconds := time.Since(start).Seconds()
	sort.Slice(latencies, func(a, b int) bool { return latencies[a] < latencies[b] })
	var errors int64
	for _, v := range codes {
		errors += int64(v)
	}
	out := result{
		Method: *method, Units: *units, Batch: *batch,
		Requests: ok.Load() + errors, OK: ok.Load(), Errors: errors, ErrorCodes: codes,
		UnitsAsked: asked.Load(), Seconds: seconds,
		RPS: float64(ok.Load()) / seconds, UnitsPerSec: float64(asked.Load()) / seconds,
		P50Ms: percentile(latencies, 0.50), P90Ms: percentile(latencies, 0.90),
		P99Ms: percentile(latencies, 0.99), P999Ms: percentile(latencies, 0.999),
		Connections: *connections, StreamsPerCx: *streams, Rate: *rate,
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
}
