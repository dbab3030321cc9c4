"""What every widget here shares: the stylesheet, the CSS classes that say the lab has
stopped, and small text helpers for HTML and numbers."""

from __future__ import annotations

import html

STYLE = """<style>
.rl-view {font-family: system-ui, sans-serif; font-size: 13px; line-height: 1.45;}
.rl-head {color: #555; margin-bottom: 4px;}
.rl-stopped {color: #b3261e; font-weight: 600;}
.rl-turn {margin: 3px 0; padding: 4px 8px; border-radius: 6px; max-width: 58em;}
.rl-user {background: #eef3fb;}
.rl-assistant {background: #f3f7ee;}
.rl-who {font-weight: 600; margin-right: 6px;}
.rl-meta {color: #777; font-size: 11px;}
.rl-tool {color: #5b4a00; font-size: 12px; margin: 2px 0;}
.rl-view del {color: #b3261e; text-decoration: line-through;}
.rl-frames {font-family: monospace; font-size: 11px; color: #444; white-space: pre;
  overflow-x: auto; margin: 0;}
.rl-lab-stopped .jupyter-widgets-disconnected::before,
.rl-lab-stopped.jupyter-widgets-disconnected::before {content: none; display: none;}
.rl-live.jupyter-widgets-disconnected .jupyter-widgets-disconnected::before {display: none;}
.rl-live.jupyter-widgets-disconnected:not(.rl-lab-stopped)::before {
  content: "The lab has stopped: its kernel restarted or shut down. Run rl.start again.";
  display: block; font: 600 13px system-ui, sans-serif; color: #b3261e; padding: 2px 0 4px;}
.rl-live.jupyter-widgets-disconnected:not(.rl-lab-stopped) .rl-state {display: none;}
.rl-live.jupyter-widgets-disconnected button, .rl-live.jupyter-widgets-disconnected input {
  pointer-events: none; opacity: 0.45;}
</style>"""
LIVE_CLASS = "rl-live"  # the outermost box of a view, panel or phone: when the kernel is
# gone (a restart drops the kernel's last messages), the front end marks every widget
# disconnected and this box's CSS says the lab has stopped instead of the stale state
STOPPED_CLASS = "rl-lab-stopped"  # once the lab stopped, the view says so itself: no
# broken-link icon on each control when the kernel restarts (see STYLE)

LAB_STOPPED = "the lab has stopped: run the cell that starts it (rl.start) again to make calls"


def esc(text: str) -> str:
    """``text`` safe inside HTML."""
    return html.escape(text, quote=False)


def plural(count: int, word: str) -> str:
    """``count`` ``word``s, in English ("1 word", "2 words")."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def seconds(ms: float) -> str:
    """Milliseconds as seconds, to the hundredth ("1.25 s")."""
    return f"{ms / 1000:.2f} s"
