package IncidentGate::Evaluations::Shared;
# What the web UI worker processes of one openQA instance on this host share about live
# evaluations, in a directory of their own: the places (an evaluation holds one of `places` lock
# files), the last verdict of each submission, and when openQA last told any of them that
# something changed. Under `prefork -c 1` an evaluating worker serves nobody else until its child
# has asked openQA, which only the other workers can answer: a bound per worker cannot keep all of
# them from evaluating at once, and then no child gets an answer until its HTTP timeout.
use Mojo::Base -base, -signatures;

use Fcntl qw(:flock O_RDWR O_CREAT);
use File::Spec;
use Mojo::JSON qw(decode_json encode_json);
use Mojo::Util 'md5_sum';
use Time::HiRes ();

has 'dir';
# verdict files not written for this long are removed now and then
has keep_s => 86400;

# The directory of the instance whose gate has this state directory and openQA URL, for this user
# (never the configuration as a whole: it holds secrets).
sub for_instance ($class, $state_dir, $openqa_url, %o) {
    my $id = substr(md5_sum(join "\0", $<, $state_dir // '', $openqa_url // ''), 0, 16);
    return $class->new(dir => File::Spec->catdir(File::Spec->tmpdir, "incident-gate-$<-$id"), %o);
}

# Creates the directory on first use, ours alone (0700, not a link, our uid), or dies naming why.
sub check ($self) {
    return 1 if $self->{checked_pid} && $self->{checked_pid} == $$;
    my $dir = $self->dir;
    mkdir $dir, 0700 or $!{EEXIST} or die "cannot create $dir: $!\n";
    my @st = lstat $dir or die "cannot read $dir: $!\n";
    die "$dir is not a directory of this user's alone\n"
      unless -d _ && !-l _ && $st[4] == $< && ($st[2] & 0077) == 0;
    $self->{checked_pid} = $$;
    return 1;
}

# One of $places places, held until release($place), or undef when all are taken. flock: what a
# forked child inherits is released by the parent's LOCK_UN, and a worker that dies releases its own.
sub acquire ($self, $places) {
    $self->check;
    delete $self->{fh} if ($self->{fh_pid} // 0) != $$;
    $self->{fh_pid} = $$;
    for my $i (0 .. $places - 1) {
        my $fh = $self->{fh}[$i] //= do {
            sysopen(my $fh, File::Spec->catfile($self->dir, "place-$i"), O_RDWR | O_CREAT, 0600)
              or die "cannot open a place in ${\$self->dir}: $!\n";
            $fh;
        };
        next if $self->{held}{$i};
        if (flock $fh, LOCK_EX | LOCK_NB) {
            $self->{held}{$i} = 1;
            return $i;
        }
    }
    return undef;
}

sub release ($self, $place) {
    return unless defined $place && delete $self->{held}{$place};
    flock $self->{fh}[$place], LOCK_UN;
}

# openQA told one of the workers that something changed.
sub changed ($self) {
    $self->check;
    my $file = File::Spec->catfile($self->dir, 'changed');
    return if Time::HiRes::utime(undef, undef, $file);
    if (open(my $fh, '>>', $file)) { close $fh }
}

# When openQA last told any worker that something changed (epoch seconds), 0 if never. A file's
# time comes from the kernel's coarse clock, some milliseconds behind Time::HiRes::time: the margin
# makes an evaluation that started just before the change count as before it.
sub changed_at ($self) {
    $self->check;
    my $at = (Time::HiRes::stat(File::Spec->catfile($self->dir, 'changed')))[9] or return 0;
    return $at + 0.1;
}

sub _file ($self, $key) { File::Spec->catfile($self->dir, 'verdict-' . ($key =~ s/[^0-9a-z]/_/gr) . '.json') }

# The last verdict of $key any worker kept: {text, at, started, no_jobs}, or undef.
sub last_verdict ($self, $key) {
    $self->check;
    open(my $fh, '<', $self->_file($key)) or return undef;
    local $/;
    my $known = eval { decode_json(scalar <$fh>) };
    return ref $known eq "HASH" && (grep { defined $known->{$_} } qw(text at started)) == 3 ? $known : undef;
}

# Keeps $known as the last verdict of $key: written whole (a temporary file renamed), so that a
# reader never sees half of it.
sub keep ($self, $key, $known) {
    $self->check;
    my $file = $self->_file($key);
    my $tmp = "$file.$$";
    open(my $fh, '>', $tmp) or return;
    print {$fh} encode_json($known);
    close $fh or return unlink $tmp;
    rename $tmp, $file or unlink $tmp;
    $self->_tidy if ++$self->{written} % 100 == 1;
}

sub _tidy ($self) {
    my $before = time - $self->keep_s;
    opendir(my $dh, $self->dir) or return;
    for my $name (grep {/^verdict-/} readdir $dh) {
        my $path = File::Spec->catfile($self->dir, $name);
        unlink $path if ((stat $path)[9] // $before) < $before;
    }
}

1;
