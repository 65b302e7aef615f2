#!/bin/bash
# A goose stand-in for the run benchmarks whose own cost is negligible: bash builtins only, apart
# from the `sleep` that is the run itself. NOT goose; it runs no agent.
#
#   quick_goose.sh run --recipe R --params task_id=N --params agent=A ... [--output-format stream-json]
#
# Sleeps for its task's seconds in $QUICK_GOOSE_SECONDS (8 characters a task, task 1 first, set by
# the benchmark; 0.5 without), prints goose's stream-json `complete` event and exits 0. With
# $TINYSCHEDULER_STANDIN_RECORD set it appends `start` and `end` records as the Python stand-in does
# ({"event", "task_id", "agent", "pid", "t"}; `end` adds "exit"), each one write of one line.
if [ "$1" = "--version" ]; then
    echo "quick_goose (benchmark stand-in, not goose)"
    exit 0
fi
task=""
agent=""
while [ $# -gt 0 ]; do
    if [ "$1" = "--params" ]; then
        case "$2" in
            task_id=*) task="${2#task_id=}" ;;
            agent=*) agent="${2#agent=}" ;;
        esac
        shift
    fi
    shift
done
seconds=0.5
case "$task" in
    "" | *[!0-9]*) ;;
    *)
        field=${QUICK_GOOSE_SECONDS:$(( (task - 1) * 8 )):8}
        field=${field%% *}
        [ -n "$field" ] && seconds=$field
        ;;
esac
record() {
    if [ -n "$TINYSCHEDULER_STANDIN_RECORD" ]; then
        printf '{"event": "%s", "task_id": %s, "agent": "%s", "pid": %s, "t": %s%s}\n' \
            "$1" "$task" "$agent" "$$" "$EPOCHREALTIME" "$2" >> "$TINYSCHEDULER_STANDIN_RECORD"
    fi
}
record start ""
echo '{"type": "message", "message": {"role": "assistant", "content": [{"type": "text", "text": "working"}]}}'
sleep "$seconds"
echo '{"type": "complete", "total_tokens": 0}'
record end ', "exit": 0'
exit 0
