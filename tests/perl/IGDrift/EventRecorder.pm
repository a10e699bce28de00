package IGDrift::EventRecorder;
# For tests/openqa_drift.rs: appends every openQA event the simulator claims to emit, as JSON lines
# {name, data}, to $IG_DRIFT_EVENTS. Loaded first (scripts/real-openqa --first-plugin), so it sees
# each event's data before openQA's AMQP plugin adds its fields to the same hash.
use Mojo::Base 'Mojolicious::Plugin', -signatures;
use Mojo::IOLoop;
use Mojo::JSON 'encode_json';

my @EVENTS = map { "openqa_$_" } qw(job_create job_done job_cancel job_restart jobs_restart job_update_result
  comment_create comment_update comment_delete comments_create comments_delete);

sub register ($self, $app, $conf = {}) {
    my $file = $ENV{IG_DRIFT_EVENTS} or return;
    Mojo::IOLoop->next_tick(
        sub {
            require OpenQA::Events;
            for my $name (@EVENTS) {
                OpenQA::Events->singleton->on(
                    $name => sub ($emitter, $args) {
                        open my $fh, '>>', $file or return;
                        print $fh encode_json({name => $name, data => $args->[3]}), "\n";
                        close $fh;
                    });
            }
        });
}

1;
