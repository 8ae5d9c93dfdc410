/* The pod sandbox ("pause") process of the e2e node: images cannot be pulled here, so containerd's
 * sandbox image is built locally around this. It holds the pod's namespaces, reaps orphans, and
 * exits at once on SIGTERM/SIGINT so that pods stop without waiting for a SIGKILL. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signo) { (void)signo; _exit(0); }

static void reap(int signo) {
  (void)signo;
  while (waitpid(-1, 0, WNOHANG) > 0) {
  }
}

int main(void) {
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
