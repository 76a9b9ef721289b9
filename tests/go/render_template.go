// render_template renders Ollama Modelfile TEMPLATEs with Go's text/template, the engine Ollama
// uses, so tests can compare them with the tokenizer's own chat template.
//
// Input (stdin): a JSON list of {"template": "...", "system": "...", "messages": [{"role", "content"}]}.
// Output (stdout): a JSON list of rendered strings, in the same order.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

// Message has the fields of Ollama's api.Message that chat templates read.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type request struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Messages []Message `json:"messages"`
}

func main() {
	var requests []request
	if err := json.NewDecoder(os.Stdin).Decode(&requests); err != nil {
		fmt.Fprintln(os.Stderr, "reading requests:", err)
		os.Exit(2)
	}
	rendered := make([]string, 0, len(requests))
	for i, r := range requests {
		tmpl, err := template.New(fmt.Sprintf("template-%d", i)).Parse(r.Template)
		if err != nil {
			fmt.Fprintln(os.Stderr, "parsing template", i, ":", err)
			os.Exit(1)
		}
		var out strings.Builder
		data := map[string]any{"System": r.System, "Messages": r.Messages, "Response": ""}
		if err := tmpl.Execute(&out, data); err != nil {
			fmt.Fprintln(os.Stderr, "rendering template", i, ":", err)
			os.Exit(1)
		}
		rendered = append(rendered, out.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(rendered); err != nil {
		fmt.Fprintln(os.Stderr, "writing output:", err)
		os.Exit(2)
	}
}
