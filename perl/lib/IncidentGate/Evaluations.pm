package IncidentGate::Evaluations;
# The one policy of every route that evaluates a verdict live (each evaluation is a forked child
# asking openQA), per web UI worker process:
#   - who asks for a submission already being evaluated (or waiting for a place) gets that
#     evaluation's answer: no second child;
#   - at most `max` evaluations run at once; one more waits up to `wait` seconds for a place,
#     with at most `queue` submissions waiting, and is then turned away (Busy, with a Retry-After);
#   - a verdict is given again, with its age, for `fresh` seconds after its evaluation ended: many
#     clients polling a dozen submissions cost openQA a dozen evaluations per that time, however
#     many they are and however fast they poll;
#   - an answer that a submission has no jobs is kept `unknown_for` seconds: numbers nobody uses
#     cost openQA one evaluation per that time, not one per request;
#   - the last verdict of each submission is kept (at most `keep`), for a page that must turn its
#     visitor away to show what was last known, and how old it is.
use Mojo::Base -base, -signatures;

use Mojo::IOLoop;
use Mojo::JSON 'decode_json';
use Mojo::Promise;
use POSIX 'ceil';
use Time::HiRes ();

# What new() does not set; read on each use, so that a test can change them as it goes.
our %DEFAULTS = (max => 2, wait => 10, queue => 64, fresh => 10, unknown_for => 60, keep => 1000);
for my $name (keys %DEFAULTS) {
    no strict 'refs';
    *$name = sub ($self) { $self->{$name} // $DEFAULTS{$name} };
}

# run: sub ($key) returning a promise of ($status, $text); $status 0 is a verdict (JSON text).
has 'run';

sub new ($class, %o) {
    my $self = $class->SUPER::new(%o);
    @$self{qw(pending order last stats)} = ({}, [], {}, {started => 0, shared => 0, reused => 0, turned_away => 0});
    $self->{running} = 0;
    $self->{average} = 1;    # seconds an evaluation takes, for Retry-After; adjusted as they end
    return $self;
}

# A promise of ($status, $text, $age) for $key (a normalized submission), $age the seconds since
# the evaluation ended (0: it ended for this asker); rejected with an
# IncidentGate::Evaluations::Busy when it is turned away, or with the evaluation's error.
sub verdict_p ($self, $key) {
    if (my $known = $self->{last}{$key}) {
        my $age = _now() - $known->{at};
        if ($known->{started} >= ($self->{changed} // 0) && reusable($known, $age, $self->fresh, $self->unknown_for)) {
            $self->{stats}{reused}++;
            return Mojo::Promise->resolve(0, $known->{text}, int($age));
        }
    }
    if (my $pending = $self->{pending}{$key}) {
        $self->{stats}{shared}++;
        return $pending->{promise};
    }
    my $pending = $self->{pending}{$key} = {key => $key, promise => Mojo::Promise->new};
    if ($self->{running} < $self->max) { $self->_start($pending) }
    elsif (@{$self->{order}} < $self->queue) {
        push @{$self->{order}}, $pending;
        $pending->{timer} = Mojo::IOLoop->timer($self->wait => sub { $self->_give_up($pending) });
    }
    else { $self->_give_up($pending) }
    return $pending->{promise};
}

# openQA told this process that something changed (an event): verdicts evaluated before are not
# given again (still shown by last_verdict, with their age).
sub changed ($self) { $self->{changed} = _now() }

# The last verdict of $key this process saw: {text => JSON, at => epoch seconds}, or undef.
sub last_verdict ($self, $key) { $self->{last}{$key} }

sub stats ($self) {
    return {%{$self->{stats}}, running => $self->{running}, waiting => scalar @{$self->{order}}};
}

# Whether a kept verdict, $age seconds old, may stand for a new evaluation: for a short while, and
# one that the submission has no jobs (a number nobody uses, or not scheduled yet) for longer.
sub reusable ($known, $age, $fresh, $unknown_for) {
    return $age >= 0 && $age < ($known->{no_jobs} && $unknown_for > $fresh ? $unknown_for : $fresh);
}

# Seconds after which asking again has a fair chance: the evaluations ahead of a new one, spread
# over the places, times what one takes; at least 1, at most 60.
sub retry_after ($average, $ahead, $max) {
    my $s = ceil($average * (1 + $ahead / ($max || 1)));
    return $s < 1 ? 1 : $s > 60 ? 60 : $s;
}

sub _now () { Time::HiRes::time() }

sub _start ($self, $pending) {
    $self->{running}++;
    $self->{stats}{started}++;
    my $t0 = _now();
    my $key = $pending->{key};
    my $p = eval { $self->run->($key) } // Mojo::Promise->reject($@ || "the evaluation did not start\n");
    $p->then(
        sub ($status, $text = undef) {
            $self->_remember($key, $text, $t0) if $status == 0;
            $pending->{promise}->resolve($status, $text, 0);
        },
        sub ($err) { $pending->{promise}->reject($err) }
    )->finally(
        sub {
            $self->{running}--;
            delete $self->{pending}{$key};
            $self->{average} = 0.8 * $self->{average} + 0.2 * (_now() - $t0);
            $self->_next;
        });
}

sub _next ($self) {
    while ($self->{running} < $self->max && (my $pending = shift @{$self->{order}})) {
        Mojo::IOLoop->remove(delete $pending->{timer}) if $pending->{timer};
        $self->_start($pending);
    }
}

sub _give_up ($self, $pending) {
    @{$self->{order}} = grep { $_ != $pending } @{$self->{order}};
    delete $self->{pending}{$pending->{key}};
    $self->{stats}{turned_away}++;
    my $ahead = @{$self->{order}} + $self->{running};
    $pending->{promise}->reject(IncidentGate::Evaluations::Busy->new(
        retry_after => retry_after($self->{average}, $ahead, $self->max)));
}

sub _remember ($self, $key, $text, $started) {
    my $verdict = eval { decode_json($text) } // {};
    $self->{last}{$key}
      = {text => $text, at => _now(), started => $started, no_jobs => ($verdict->{result} // '') eq 'no_jobs'};
    my $last = $self->{last};
    return if keys %$last <= $self->keep;
    # the oldest tenth goes: a visitor walking through numbers cannot make this grow
    my @old = sort { $last->{$a}{at} <=> $last->{$b}{at} } keys %$last;
    delete @$last{@old[0 .. int(@old / 10)]};
}

package IncidentGate::Evaluations::Busy;
use Mojo::Base -base, -signatures;
use overload '""' => sub ($self, @) { $self->message . "\n" }, fallback => 1;

has retry_after => 1;
has message => 'too many verdicts are being evaluated, try again shortly';

1;
