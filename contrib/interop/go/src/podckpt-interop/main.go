// podckpt-interop is a grpc-go client for podckpt's interop tests: grpc-go is
// the stack of the kubelet, crictl and critest, so it dials the way the
// kubelet's CRI client does (authority "localhost", 16 MiB messages).
//
//	podckpt-interop unix:///ABS/PATH.sock
//
// It holds one channel for its whole life and reads one call per line on
// stdin, as JSON:
//
//	{"method": "/pkg.Service/Method", "request": "<base64>", "timeout_ms": 5000,
//	 "metadata": {"key": "value"}, "stream": false, "max_messages": 0}
//
// and writes one answer per line on stdout:
//
//	{"code": 0, "message": "", "responses": ["<base64>", ...]}
//
// Messages are raw protobuf bytes both ways: the client knows no schema.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// The kubelet's CRI client allows messages of up to 16 MiB.
const maxMsgSize = 16 << 20

// rawCodec passes message bytes through untouched. Registered under the
// name "proto" it replaces grpc-go's protobuf codec, so the content-type
// stays "application/grpc", exactly what a generated client sends.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	if b, ok := v.(*[]byte); ok {
		return *b, nil
	}
	return nil, fmt.Errorf("rawCodec cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec cannot unmarshal into %T", v)
	}
	// The transport may reuse its buffer once we return.
	// Never nil: an empty message is a message, and JSON would write nil as null.
	*b = append([]byte{}, data...)
	return nil
}

func init() { encoding.RegisterCodec(rawCodec{}) }

type call struct {
	Method      string            `json:"method"`
	Request     []byte            `json:"request"` // base64 in JSON
	TimeoutMs   *int64            `json:"timeout_ms"`
	Metadata    map[string]string `json:"metadata"`
	Stream      bool              `json:"stream"`
	MaxMessages int               `json:"max_messages"`
}

type answer struct {
	Code      codes.Code `json:"code"`
	Message   string     `json:"message"`
	Responses [][]byte   `json:"responses"` // base64 in JSON
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: podckpt-interop unix:///ABS/PATH.sock")
		os.Exit(2)
	}
	conn, err := grpc.NewClient(os.Args[1],
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority("localhost"),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize), grpc.MaxCallSendMsgSize(maxMsgSize)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "podckpt-interop:", err)
		os.Exit(1)
	}
	defer conn.Close()

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(nil, 256<<20)
	out := json.NewEncoder(os.Stdout) // one line per Encode, unbuffered
	for in.Scan() {
		var c call
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			fmt.Fprintln(os.Stderr, "podckpt-interop: bad request line:", err)
			os.Exit(1)
		}
		if err := out.Encode(run(conn, &c)); err != nil {
			fmt.Fprintln(os.Stderr, "podckpt-interop:", err)
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "podckpt-interop: reading stdin:", err)
		os.Exit(1)
	}
}

func run(conn *grpc.ClientConn, c *call) answer {
	ctx := context.Background()
	if c.TimeoutMs != nil {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeout(ctx, time.Duration(*c.TimeoutMs)*time.Millisecond)
		defer stop()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctx = metadata.NewOutgoingContext(ctx, metadata.New(c.Metadata))
	a := answer{Responses: [][]byte{}}
	var err error
	if c.Stream {
		a.Responses, err = serverStream(ctx, cancel, conn, c)
	} else {
		var resp []byte
		if err = conn.Invoke(ctx, c.Method, &c.Request, &resp); err == nil {
			a.Responses = append(a.Responses, resp)
		}
	}
	s := status.Convert(err)
	a.Code, a.Message = s.Code(), s.Message()
	return a
}

// serverStream sends one request and reads messages until the stream ends,
// or until MaxMessages have come, then cancels and returns the status the
// stack reports for that (CANCELLED).
func serverStream(ctx context.Context, cancel context.CancelFunc, conn *grpc.ClientConn, c *call) ([][]byte, error) {
	responses := [][]byte{}
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, c.Method)
	if err != nil {
		return responses, err
	}
	if err := stream.SendMsg(&c.Request); err != nil && !errors.Is(err, io.EOF) {
		return responses, err
	}
	// On io.EOF from SendMsg the real status comes from RecvMsg.
	if err := stream.CloseSend(); err != nil {
		return responses, err
	}
	for c.MaxMessages == 0 || len(responses) < c.MaxMessages {
		var msg []byte
		if err := stream.RecvMsg(&msg); err != nil {
			return responses, endOf(err)
		}
		responses = append(responses, msg)
	}
	// Enough: cancel, then report what the stack says of the call now.
	cancel()
	for {
		var msg []byte
		if err := stream.RecvMsg(&msg); err != nil {
			return responses, endOf(err)
		}
	}
}

// endOf turns RecvMsg's io.EOF, a stream that ended with status OK, into nil.
func endOf(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}
